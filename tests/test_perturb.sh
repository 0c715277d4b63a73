#!/usr/bin/env bash
# --perturb (MATH.md 4.5) on the exact memorising mixture: a rotation of
# the field (antisymmetric M: not a gradient, but div(p M grad log p) = 0)
# leaves the samples' spread about their components as it is, a swap
# (symmetric M) and a scaling (M = I, a gradient) of the same size do not;
# the perturbed field is measurably non-conservative for rot and swap and
# conservative for scale, with exact JVPs that agree with finite
# differences; bad input is refused with a message.
# usage: test_perturb.sh path/to/difflux source-dir
set -u
DFX=$1
SRC=$2
GMM=$SRC/models/mnist-gmm.safetensors
CLS=$SRC/models/mnist-classifier.safetensors
TMP=$(mktemp -d /tmp/difflux-test-perturb-XXXXXX)
trap 'rm -rf "$TMP"' EXIT
fails=0
fail() { echo "FAIL: $*"; fails=$((fails + 1)); }
. "$(dirname "$0")/expect.sh"

# the spread: median distance of a sample to its nearest training digit
# (the mixture's components are 300 of them, std 0.02)
for k in rot:0 rot:1 swap:1 scale:0.5; do
    "$DFX" eval --model "$GMM" --classifier "$CLS" --n 200 --steps 64 --threads 2 --quiet \
        --perturb $k --json "$TMP/$k.json" >/dev/null || fail "eval --perturb $k"
done
n0=$(field "$TMP/rot:0.json" nn_median)
nr=$(field "$TMP/rot:1.json" nn_median)
ns=$(field "$TMP/swap:1.json" nn_median)
nc=$(field "$TMP/scale:0.5.json" nn_median)
echo "nearest-digit median: none $n0, rot:1 $nr, swap:1 $ns, scale:0.5 $nc"
holds "$nr > 0.97 * $n0 && $nr < 1.03 * $n0" || fail "rot:1 moved the spread: $nr against $n0"
holds "$ns > 1.4 * $n0" || fail "swap:1 did not move the spread: $ns against $n0"
holds "$nc > 1.3 * $n0" || fail "scale:0.5 did not move the spread: $nc against $n0"

# the perturbed field's asymmetry, exact JVPs against central differences
cons() {
    "$DFX" conservativity --model "$GMM" --data "$SRC/models/data/mnist10k-images-idx3-ubyte.gz" \
        --points 2 --probes 4 --t 0.5 --patch 0 --loop-nodes 0 --threads 2 --quiet "$@"
}
for k in rot:1 swap:1 scale:0.5; do
    cons --perturb $k --json "$TMP/c-$k.json" >/dev/null || fail "conservativity --perturb $k"
    cons --perturb $k --method fd --json "$TMP/f-$k.json" >/dev/null || fail "fd --perturb $k"
done
a() { grep -m1 '"asymmetry":' "$1" | sed -E 's/.*:[[:space:]]*([^,]+),?$/\1/'; }
ar=$(a "$TMP/c-rot:1.json") as=$(a "$TMP/c-swap:1.json") ac=$(a "$TMP/c-scale:0.5.json")
fr=$(a "$TMP/f-rot:1.json")
echo "asymmetry at t = 0.5: rot:1 $ar (fd $fr), swap:1 $as, scale:0.5 $ac"
holds "$ar > 0.05" || fail "rot:1 field not measurably asymmetric: $ar"
holds "$as > 0.05" || fail "swap:1 field not measurably asymmetric: $as"
holds "$ac < 1e-5" || fail "scale:0.5 field (a gradient) asymmetric: $ac"
holds "$fr > 0.98 * $ar && $fr < 1.02 * $ar" || fail "exact JVP ($ar) and fd ($fr) disagree"

# bad input
expect 2 "--perturb" -- "$DFX" sample --model "$GMM" --perturb twist:1 --out "$TMP/x.png"
expect 2 "--perturb" -- "$DFX" sample --model "$GMM" --perturb rot --out "$TMP/x.png"
expect 2 "--perturb" -- "$DFX" sample --model "$GMM" --perturb rot:nan --out "$TMP/x.png"
expect 2 "--perturb" -- "$DFX" conservativity --model "$GMM" --perturb rot:x
expect 1 "dale path" -- "$DFX" sample --model "$SRC/models/mnist-dale-gmm.safetensors" \
    --perturb rot:1 --out "$TMP/x.png"
[ -e "$TMP/x.png" ] && fail "a refused run left an output"
[ $fails -eq 0 ] && echo "perturb: all checks passed"
exit $fails
