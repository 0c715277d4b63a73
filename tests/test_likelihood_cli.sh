#!/usr/bin/env bash
# difflux likelihood from the command line: bad input refused before any
# work with a message naming the option, the JSON and CSV it promises,
# reproducible figures (the numbers themselves: test_likelihood).
# usage: test_likelihood_cli.sh path/to/difflux source-dir
set -u
DFX=$1
SRC=$2
FLOW=$SRC/models/mnist-flow.safetensors
GMM=$SRC/models/mnist-gmm.safetensors
DATA=$SRC/models/data/mnist10k-images-idx3-ubyte.gz
TMP=$(mktemp -d /tmp/difflux-test-lik-XXXXXX)
trap 'rm -rf "$TMP"' EXIT
fails=0
fail() { echo "FAIL: $*"; fails=$((fails + 1)); }

. "$(dirname "$0")/expect.sh"

expect 2 "--data IDX\|NPY is required" -- "$DFX" likelihood --model "$FLOW"
expect 2 "unknown --div 'magic'" -- "$DFX" likelihood --data "$DATA" --div magic
expect 2 "unknown --probe 'sphere'" -- "$DFX" likelihood --data "$DATA" --probe sphere
expect 2 "--probes must be in 1..100000" -- "$DFX" likelihood --data "$DATA" --probes 0
expect 2 "--sampler 'em': the likelihood integrates with dopri5, heun, rk4 or euler" -- "$DFX" likelihood --data "$DATA" --sampler em
expect 2 "unknown --grid 'schedule'" -- "$DFX" likelihood --data "$DATA" --grid schedule
expect 2 "--rtol must be in \(0, 1\)" -- "$DFX" likelihood --data "$DATA" --rtol 0
expect 2 "--t-data 2 is outside" -- "$DFX" likelihood --data "$DATA" --t-data 2
expect 2 "--class expects a label or 'none'" -- "$DFX" likelihood --data "$DATA" --class seven
expect 2 "--n must be at least 1" -- "$DFX" likelihood --data "$DATA" --n 0
expect 1 "no-such.idx" -- "$DFX" likelihood --model "$FLOW" --data "$TMP/no-such.idx" --quiet
expect 1 "holds 10000 images, fewer than --n 20000" -- "$DFX" likelihood --model "$FLOW" --data "$DATA" --n 20000 --quiet
expect 1 "fitted start distribution is for t = .*not --t-noise 0.5" -- "$DFX" likelihood --model "$SRC/models/mnist-dale.safetensors" --data "$DATA" --n 1 --t-noise 0.5 --quiet
expect 2 "json.*csv|same file" -- "$DFX" likelihood --model "$FLOW" --data "$DATA" --json "$TMP/x" --csv "$TMP/x"

# a short fixed-step run: the report, the JSON keys, one CSV row per point
run=(likelihood --model "$FLOW" --data "$DATA" --n 3 --sampler heun --steps 3 --threads 1 --quiet)
expect 0 "bits/dim +[0-9.-]+ \+- [0-9.]+" -- "$DFX" "${run[@]}" --json "$TMP/a.json" --csv "$TMP/a.csv"
for key in nll_nats bpd_mean bpd_se nfe_mean dequantized; do
    grep -q "\"$key\"" "$TMP/a.json" || fail "likelihood JSON lacks $key"
done
grep -q '"nfe_mean":[[:space:]]*6' "$TMP/a.json" || fail "heun, 3 steps: 6 evaluations per point: $(grep nfe_mean "$TMP/a.json")"
[ "$(wc -l <"$TMP/a.csv")" -eq 4 ] || fail "likelihood CSV: $(wc -l <"$TMP/a.csv") lines for 3 points"
# the same run again: the same figures; another seed: other probes and noise
"$DFX" "${run[@]}" --json "$TMP/b.json" >/dev/null || fail "second run"
strip() { grep -v '"seconds"' "$1"; }
[ "$(strip "$TMP/a.json")" = "$(strip "$TMP/b.json")" ] || fail "likelihood is not reproducible"
"$DFX" "${run[@]}" --seed 1 --json "$TMP/c.json" >/dev/null || fail "seed 1"
[ "$(strip "$TMP/a.json")" != "$(strip "$TMP/c.json")" ] || fail "--seed changes nothing"
# a batch of 1 gives the same figures as one of 64 (each point its own steps)
"$DFX" "${run[@]}" --batch 1 --json "$TMP/d.json" >/dev/null || fail "batch 1"
[ "$(strip "$TMP/a.json" | grep -v '"batch"')" = "$(strip "$TMP/d.json" | grep -v '"batch"')" ] || fail "likelihood depends on --batch"

# an analytic model on another path: its closed form beside the ODE, and
# the floor that the path's noise at t_data puts under any data's density
expect 0 "floor +1\.750[0-9] bits/dim" -- "$DFX" likelihood --model "$GMM" --path vp --data "$DATA" --n 2 --sampler rk4 --steps 8 --quiet --json "$TMP/v.json"
grep -q '"t_data":[[:space:]]*0.001' "$TMP/v.json" && grep -q '"exact_bpd_mean"' "$TMP/v.json" || fail "likelihood JSON: t_data or the exact figure missing"
expect 2 "unknown --path 'sideways'" -- "$DFX" likelihood --data "$DATA" --path sideways

# .npy values (difflux sample --npy) are taken as they are
"$DFX" sample --model "$GMM" --n 2 --steps 4 --npy "$TMP/s.npy" --out "$TMP/s.png" --quiet || fail "sample --npy"
expect 0 "as given \(continuous density" -- "$DFX" likelihood --model "$GMM" --data "$TMP/s.npy" --n 2 --sampler rk4 --steps 2 --quiet --json "$TMP/n.json"
grep -q '"dequantized":[[:space:]]*false' "$TMP/n.json" || fail ".npy data were dequantised"

# a diffusers pipeline folder (a discrete schedule, an eps network)
DIFF=$SRC/tests/fixtures/diffusers/attn
if [ -d "$DIFF" ]; then
    "$DFX" sample --model "$DIFF" --n 2 --steps 3 --npy "$TMP/d.npy" --out "$TMP/d.png" --quiet || fail "diffusers sample"
    expect 0 "bits/dim +[0-9.-]+ .*256 dimensions" -- "$DFX" likelihood --model "$DIFF" --data "$TMP/d.npy" --n 2 --sampler rk4 --steps 3 --quiet
fi

if [ $fails -ne 0 ]; then
    echo "test_likelihood_cli: $fails check(s) failed"
    exit 1
fi
echo "test_likelihood_cli: all checks passed"
