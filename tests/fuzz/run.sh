#!/usr/bin/env bash
# Builds the libFuzzer targets with clang and runs each for SECONDS
# (default 60). A crash, leak, timeout or out-of-memory input is copied
# into tests/fuzz/regress/TARGET/ (replayed by the ctest fuzz_replay_TARGET
# from then on) and the script exits non-zero.
# usage: tests/fuzz/run.sh [SECONDS] [TARGET...]   (from anywhere)
#   DIFFLUX_FUZZ_BUILD  build folder (default build-fuzz)
#   DIFFLUX_FUZZ_JOBS   targets run at once (default 1)
#   DIFFLUX_FUZZ_OUT    logs and grown corpora (default BUILD/fuzz-out)
set -u
SECONDS_PER=${1:-60}
shift $(($# > 0 ? 1 : 0))
HERE=$(cd "$(dirname "$0")" && pwd)
SRC=$(cd "$HERE/../.." && pwd)
TARGETS=${*:-model config npy idx}
B=${DIFFLUX_FUZZ_BUILD:-$SRC/build-fuzz}
OUT=${DIFFLUX_FUZZ_OUT:-$B/fuzz-out}
JOBS=${DIFFLUX_FUZZ_JOBS:-1}

command -v clang >/dev/null || { echo "run.sh: clang is needed (apt-get install clang libclang-rt-dev)"; exit 2; }
rt=$(clang -print-file-name="libclang_rt.fuzzer-$(uname -m).a")
[ -f "$rt" ] || { echo "run.sh: clang has no libFuzzer runtime (apt-get install libclang-rt-dev)"; exit 2; }
mkdir -p "$B"
cmake -S "$SRC" -B "$B" -DCMAKE_C_COMPILER=clang -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DDIFFLUX_FUZZ=ON -DDIFFLUX_SANITIZE=ON -DDIFFLUX_CUDA=OFF -DDIFFLUX_MPI=OFF >"$B/fuzz-cmake.log" 2>&1 ||
    { cat "$B/fuzz-cmake.log"; exit 2; }
# shellcheck disable=SC2046
cmake --build "$B" -j "$(nproc)" --target $(for t in $TARGETS; do echo "fuzz_$t"; done) >"$B/fuzz-build.log" 2>&1 ||
    { tail -30 "$B/fuzz-build.log"; exit 2; }

# per target: extra seed folders, libFuzzer options
seeds_model="$SRC/tests/fixtures $OUT/seeds-models"
opts_model="-max_len=5242880 -rss_limit_mb=4096 -timeout=30"
opts_config="-max_len=16384 -timeout=10"
opts_npy="-max_len=65536 -timeout=10"
opts_idx="-max_len=65536 -timeout=10"
mkdir -p "$OUT/seeds-models"
cp "$SRC"/models/*.safetensors "$OUT/seeds-models/" 2>/dev/null

run_one() {
    local t=$1 seeds opts
    seeds=$(eval echo "\${seeds_$t:-}")
    opts=$(eval echo "\${opts_$t:-}")
    rm -rf "$OUT/crash-$t" # this run's findings only
    mkdir -p "$OUT/corpus-$t" "$OUT/crash-$t"
    # the grown corpus stays in OUT; the seeds and regressions are read only
    # shellcheck disable=SC2086
    ASAN_OPTIONS=detect_leaks=1:allocator_may_return_null=1 \
    LSAN_OPTIONS=suppressions=$SRC/tests/lsan.supp:print_suppressions=0 \
        "$B/tests/fuzz/fuzz_$t" -max_total_time="$SECONDS_PER" -print_final_stats=1 \
        -artifact_prefix="$OUT/crash-$t/" $opts "$OUT/corpus-$t" "$HERE/corpus/$t" \
        "$HERE/regress/$t" $seeds >"$OUT/$t.log" 2>&1
    local rc=$?
    local last
    last=$(grep -E '^#[0-9]+.*(cov|ft):' "$OUT/$t.log" | tail -1)
    local execs
    execs=$(grep -E '^stat::number_of_executed_units' "$OUT/$t.log" | awk '{print $2}')
    echo "fuzz_$t: exit $rc, ${execs:-?} executions; last: ${last:-none}"
    local found=0
    for c in "$OUT/crash-$t"/*; do
        [ -f "$c" ] || continue
        cp "$c" "$HERE/regress/$t/"
        echo "  NEW REGRESSION INPUT: tests/fuzz/regress/$t/$(basename "$c") (see $OUT/$t.log)"
        found=1
    done
    [ $rc -eq 0 ] && [ $found -eq 0 ]
}

status=0
running=0
for t in $TARGETS; do
    run_one "$t" &
    running=$((running + 1))
    if [ "$running" -ge "$JOBS" ]; then
        wait -n || status=1
        running=$((running - 1))
    fi
done
while [ "$running" -gt 0 ]; do
    wait -n || status=1
    running=$((running - 1))
done
[ $status -eq 0 ] && echo "run.sh: no crashes in ${SECONDS_PER} s per target" ||
    echo "run.sh: FAILURES: regression inputs were added under tests/fuzz/regress/"
exit $status
