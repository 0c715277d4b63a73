#!/usr/bin/env bash
# The avx2 and avx512 paths sum every convolution in the same order with
# fused multiply-adds, and everything else elementwise or in fixed lanes:
# they must give the same samples, bit for bit (the baseline, without FMA,
# rounds differently and is left out). Skips (77) where fewer than two of
# these paths run on this CPU; the CI's AVX-512 emulation build
# (-DDIFFLUX_EMULATE_AVX512=ON) runs it on AVX2 machines.
# usage: test_isa_paths.sh path/to/difflux source-dir
set -u
DFX=$1
SRC=$2
TMP=$(mktemp -d /tmp/difflux-test-isa-XXXXXX)
trap 'rm -rf "$TMP"' EXIT
paths=()
for isa in avx2 avx512; do
    DIFFLUX_ISA=$isa "$DFX" --version >/dev/null 2>&1 && paths+=("$isa")
done
if [ ${#paths[@]} -lt 2 ]; then
    echo "skipped: this CPU (or build) has only ${paths[*]:-no FMA path}"
    exit 77
fi
fails=0 passed=0
for m in mnist-flow:heun:4 mnist-dale:adls:40 mnist-cond:dpmpp_2m:4; do
    IFS=: read -r model sampler steps <<<"$m"
    for isa in "${paths[@]}"; do
        DIFFLUX_ISA=$isa "$DFX" sample --model "$SRC/models/$model.safetensors" --sampler "$sampler" \
            --steps "$steps" --n 6 --batch 4 --no-png --npy "$TMP/$model-$isa.npy" --quiet || fails=$((fails + 1))
    done
    if cmp -s "$TMP/$model-avx2.npy" "$TMP/$model-avx512.npy"; then
        echo "$model ($sampler): avx2 and avx512 samples identical"
        passed=$((passed + 1))
    else
        echo "FAIL: $model ($sampler): avx2 and avx512 samples differ"
        fails=$((fails + 1))
    fi
done
echo "$passed passed, $fails failed"
[ $fails -eq 0 ]
