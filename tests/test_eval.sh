#!/usr/bin/env bash
# difflux eval and sweep on the shipped classifier: the metrics behave as
# they must on the exact memorising mixture (accurate sampling -> low FID,
# every class, samples on top of training images; two Heun steps -> a
# clearly worse FID, no copies), samples read from .npy give the same
# numbers as drawn ones, bad input is refused with a message.
# usage: test_eval.sh path/to/difflux source-dir
set -u
DFX=$1
SRC=$2
GMM=$SRC/models/mnist-gmm.safetensors
CLS=$SRC/models/mnist-classifier.safetensors
TMP=$(mktemp -d /tmp/difflux-test-eval-XXXXXX)
trap 'rm -rf "$TMP"' EXIT
fails=0
fail() { echo "FAIL: $*"; fails=$((fails + 1)); }
. "$(dirname "$0")/expect.sh"

run() { "$DFX" eval --model "$GMM" --classifier "$CLS" --threads 2 --quiet "$@"; }
run --n 200 --steps 16 --json "$TMP/good.json" --save-samples "$TMP/good.npy" >"$TMP/good.txt" ||
    fail "eval of the mixture"
run --n 200 --steps 2 --json "$TMP/bad.json" >/dev/null || fail "eval with 2 steps"
for k in FID KID confidence classes memorisation; do
    grep -q "^$k" "$TMP/good.txt" || fail "the report lacks '$k': $(cat "$TMP/good.txt")"
done
g=$(field "$TMP/good.json" fid) b=$(field "$TMP/bad.json" fid)
holds "$g < 10" || fail "FID of accurate samples of the mixture is $g (expected < 10)"
holds "$b > 3 * $g" || fail "FID with 2 steps ($b) is not clearly worse than with 16 ($g)"
holds "$(field "$TMP/good.json" kid) < $(field "$TMP/bad.json" kid)" || fail "KID does not order the two"
holds "$(field "$TMP/good.json" confidence) > 0.9" || fail "classifier confidence on mixture samples"
[ "$(field "$TMP/good.json" classes_covered)" = 10 ] || fail "not every digit among 200 samples"
# the mixture memorises 300 training digits: its accurate samples are copies
holds "$(field "$TMP/good.json" nn_close) > 0.9" || fail "memorisation not detected"
holds "$(field "$TMP/bad.json" nn_close) < 0.2" || fail "2-step samples flagged as copies"
# real digits (IDX) are the floor: FID below the mixture's, every one a
# training image (distance 0)
"$DFX" eval --samples "$SRC/models/data/mnist10k-images-idx3-ubyte.gz" --n 200 --classifier "$CLS" \
    --json "$TMP/real.json" --quiet >/dev/null || fail "eval of real digits"
r=$(field "$TMP/real.json" fid)
holds "$r < $g" || fail "FID of 200 real digits ($r) is not below the mixture's ($g)"
[ "$(field "$TMP/real.json" nn_median)" = 0 ] || fail "real digits are not found in the training set"
# the same samples read back give the same metrics
"$DFX" eval --samples "$TMP/good.npy" --model "$GMM" --classifier "$CLS" --json "$TMP/file.json" \
    --quiet >/dev/null || fail "eval --samples"
for k in fid kid confidence histogram nn_median; do
    [ "$(field "$TMP/good.json" $k)" = "$(field "$TMP/file.json" $k)" ] ||
        fail "--samples: $k differs: $(field "$TMP/good.json" $k) vs $(field "$TMP/file.json" $k)"
done

# the shipped class-conditional model: --class 7 --guidance 2 draws sevens
COND=$SRC/models/mnist-cond.safetensors
if [ -f "$COND" ]; then
    "$DFX" eval --model "$COND" --classifier "$CLS" --class 7 --guidance 2 --n 20 --steps 10 \
        --threads 2 --no-nn --json "$TMP/c7.json" --quiet >/dev/null || fail "eval of mnist-cond"
    sevens=$(sed -E 's/.*"histogram": \[([^]]*)\].*/\1/' "$TMP/c7.json" | cut -d, -f8 | tr -d ' ')
    [ "${sevens:-0}" -ge 18 ] || fail "mnist-cond --class 7: only $sevens of 20 samples are sevens"
fi

# sweep: a table row per (sampler, steps), FID falls with the step count
"$DFX" sweep --model "$GMM" --classifier "$CLS" --samplers heun,euler --steps 2,8 --n 60 \
    --threads 2 --csv "$TMP/s.csv" --quiet >"$TMP/s.txt" || fail "sweep"
[ "$(grep -c '^heun,\|^euler,' "$TMP/s.csv")" = 4 ] || fail "sweep CSV: $(cat "$TMP/s.csv")"
f2=$(awk -F, '/^heun,2,/ {print $4}' "$TMP/s.csv") f8=$(awk -F, '/^heun,8,/ {print $4}' "$TMP/s.csv")
holds "$f8 < $f2" || fail "sweep: heun FID with 8 steps ($f8) not below 2 steps ($f2)"
# --nfe: each sampler gets the most steps that fit the budget, and the
# measured evaluations (the CSV's nfe) stay within it; rk4's one step with
# the final denoising (5) does not fit 4, and is skipped; at 8 it would be
# the 1 step of 6 again, and is not run twice
"$DFX" sweep --model "$GMM" --classifier "$CLS" --samplers heun,deis,rk4 --nfe 4,6,8,12 \
    --n 20 --threads 2 --csv "$TMP/b.csv" >"$TMP/b.txt" || fail "sweep --nfe"
want="heun,1,3 heun,2,5 heun,3,7 heun,5,11 deis,3,4 deis,5,6 deis,7,8 deis,11,12 rk4,1,5 rk4,2,9"
got=$(awk -F, '!/^#/ && NR > 2 {printf "%s%s,%s,%d", sep, $1, $2, $3; sep=" "}' "$TMP/b.csv")
[ "$got" = "$want" ] || fail "sweep --nfe: rows '$got', expected '$want'"
grep -q "rk4.*skipped: one step takes 5 evaluations, over the budget of 4" "$TMP/b.txt" ||
    fail "sweep --nfe: no skip line for rk4: $(cat "$TMP/b.txt")"
grep -q "rk4.*budget 8: no more steps fit than at the budget before, 1" "$TMP/b.txt" ||
    fail "sweep --nfe: rk4 at 8 not reported as a repeat: $(cat "$TMP/b.txt")"
if "$DFX" sweep --model "$GMM" --classifier "$CLS" --samplers euler --steps 1,2 --n 20 --threads 2 \
    --csv "$TMP/p.csv" --plot "$TMP/p.png" --quiet >/dev/null 2>"$TMP/p.err"; then
    [ "$(head -c 4 "$TMP/p.png" | od -An -c | tr -d ' ')" = "211PNG" ] || fail "sweep plot is not a PNG"
    # the plot again from the table, without sampling
    "$DFX" sweep --from-csv "$TMP/b.csv" --plot "$TMP/r.png" --quiet || fail "sweep --from-csv"
    [ "$(head -c 4 "$TMP/r.png" | od -An -c | tr -d ' ')" = "211PNG" ] || fail "--from-csv plot is not a PNG"
else
    grep -q "no PLplot" "$TMP/p.err" || fail "sweep --plot: $(cat "$TMP/p.err")"
fi

# bad input: a message naming the problem, a non-zero exit, no crash
expect 2 "--n must be at least 2" -- "$DFX" eval --n 1
expect 2 "--make-reference needs --classifier and --data" -- "$DFX" eval --make-reference
expect 2 "belong to --make-reference" -- "$DFX" eval --data x.idx
expect 2 "need --kid-subsets >= 1" -- "$DFX" eval --kid-subsets 0
expect 1 "is a classifier" -- "$DFX" eval --model "$CLS" --n 4 --quiet
expect 1 "not a difflux reference file" -- run --n 4 --steps 1 --reference "$GMM"
expect 1 "no-such.npy: cannot open" -- "$DFX" eval --samples "$TMP/no-such.npy" --classifier "$CLS"
printf 'garbage' >"$TMP/bad.npy"
expect 1 "not a .npy file" -- "$DFX" eval --samples "$TMP/bad.npy" --classifier "$CLS"
expect 1 "no-such.safetensors" -- "$DFX" eval --model "$GMM" --classifier "$TMP/no-such.safetensors" --n 4 --quiet
expect 2 "unknown sampler 'nope' in --samplers" -- "$DFX" sweep --samplers heun,nope
expect 2 "--steps entries must be integers" -- "$DFX" sweep --steps 4,2.5
printf 'heun,2,x\n' >"$TMP/bad.csv"
expect 1 "bad.csv: line 1 is not a sweep row" -- "$DFX" sweep --from-csv "$TMP/bad.csv" --plot "$TMP/r.png"
expect 2 "--from-csv needs --plot" -- "$DFX" sweep --from-csv "$TMP/bad.csv"
expect 2 "give --steps or --nfe, not both" -- "$DFX" sweep --steps 4 --nfe 8
expect 2 "dopri5 is adaptive" -- "$DFX" sweep --samplers heun,dopri5 --nfe 8

[ $fails -eq 0 ] && echo "test_eval: all checks passed"
exit $((fails > 0))
