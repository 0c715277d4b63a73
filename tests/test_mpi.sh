#!/usr/bin/env bash
# mpirun -np 2 difflux sample|eval|likelihood gives exactly what one process gives
# with the same seed: the ranks draw blocks of the sample indices and rank
# 0 gathers them. Skips (77) without mpirun or an MPI build.
# usage: test_mpi.sh path/to/difflux source-dir
set -u
DFX=$1
SRC=$2
command -v mpirun >/dev/null || { echo "no mpirun: skipped"; exit 77; }
"$DFX" --version | grep -q MPI || { echo "difflux built without MPI: skipped"; exit 77; }
# CI runs as root; two ranks on however many cores there are
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
export OMP_NUM_THREADS=1
# Open MPI keeps allocations until exit in plug-ins it unloads before
# LeakSanitizer runs (so they cannot be suppressed by name): no leak check
# inside mpirun. The same commands run as one process, with leak checks,
# here and in test_cli/test_eval.
mpirun() { ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0" command mpirun -x ASAN_OPTIONS "$@"; }
TMP=$(mktemp -d /tmp/difflux-test-mpi-XXXXXX)
trap 'rm -rf "$TMP"' EXIT
fails=0
fail() { echo "FAIL: $*"; fails=$((fails + 1)); }

# an odd count over 2 ranks with a batch that does not divide the blocks
for model in mnist-gmm mnist-flow; do
    args=(sample --model "$SRC/models/$model.safetensors" --n 7 --batch 2 --steps 3 --seed 11
          --threads 1 --quiet)
    "$DFX" "${args[@]}" --npy "$TMP/one.npy" --out "$TMP/one.png" || fail "$model: one process"
    mpirun -np 2 "$DFX" "${args[@]}" --npy "$TMP/two.npy" --out "$TMP/two.png" ||
        fail "$model: mpirun -np 2"
    cmp -s "$TMP/one.npy" "$TMP/two.npy" || fail "$model: samples differ between 1 and 2 ranks"
    cmp -s "$TMP/one.png" "$TMP/two.png" || fail "$model: grids differ between 1 and 2 ranks"
done
# the samples must not all be the same (a gather that lost rank 1's block
# would leave zeros there, which the comparison above catches; this guards
# against both runs being degenerate)
[ -s "$TMP/one.npy" ] || fail "no samples written"

# eval: the metrics rank 0 reports are those of one process
if [ -f "$SRC/models/mnist-classifier.safetensors" ]; then
    args=(eval --model "$SRC/models/mnist-gmm.safetensors" --n 40 --batch 8 --steps 3
          --kid-subsets 3 --kid-size 20 --threads 1 --quiet)
    "$DFX" "${args[@]}" --json "$TMP/one.json" >/dev/null || fail "eval: one process"
    mpirun -np 2 "$DFX" "${args[@]}" --json "$TMP/two.json" >/dev/null || fail "eval: mpirun -np 2"
    # seconds differ; everything else must match
    strip() { sed -E 's/"seconds": [0-9.]+, //' "$1"; }
    [ "$(strip "$TMP/one.json")" = "$(strip "$TMP/two.json")" ] ||
        fail "eval: metrics differ: $(cat "$TMP/one.json") vs $(cat "$TMP/two.json")"
fi

# likelihood: rank 0 reports every point's figures exactly as one process
args=(likelihood --model "$SRC/models/mnist-flow.safetensors"
      --data "$SRC/models/data/mnist10k-images-idx3-ubyte.gz" --n 3 --sampler heun --steps 2
      --batch 2 --threads 1 --quiet)
"$DFX" "${args[@]}" --json "$TMP/l1.json" >/dev/null || fail "likelihood: one process"
mpirun -np 2 "$DFX" "${args[@]}" --json "$TMP/l2.json" >/dev/null || fail "likelihood: mpirun -np 2"
[ "$(grep -v '"seconds"' "$TMP/l1.json")" = "$(grep -v '"seconds"' "$TMP/l2.json")" ] ||
    fail "likelihood: figures differ between 1 and 2 ranks"

# a failing rank makes the whole run fail with a message, not a hang
out=$(timeout 120 mpirun -np 2 "$DFX" sample --model "$TMP/missing.safetensors" --n 4 --quiet 2>&1)
rc=$?
[ $rc -ne 0 ] && [ $rc -ne 124 ] || fail "missing model under mpirun: exit $rc"
grep -q "missing.safetensors" <<<"$out" || fail "missing model under mpirun: no message: $out"

[ $fails -eq 0 ] && echo "all MPI checks passed"
exit $((fails > 0))
