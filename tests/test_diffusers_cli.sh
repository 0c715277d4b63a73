#!/usr/bin/env bash
# diffusers models through the CLI (tests/fixtures/diffusers): a pipeline
# folder samples with every sampler; --init and --scheduler reproduce the
# fixture run of diffusers' DDIMScheduler; convert writes a native file that
# samples bit for bit as the folder does; unsupported configs are refused
# naming the key and its value, before any work.
# usage: test_diffusers_cli.sh path/to/difflux source-dir
set -u
DFX=$1
SRC=$2
D=$SRC/tests/fixtures/diffusers
TMP=$(mktemp -d /tmp/difflux-test-diffusers-XXXXXX)
trap 'rm -rf "$TMP"' EXIT
fails=0

. "$(dirname "$0")/expect.sh"

# every sampler, on the pipeline folder (its scheduler: DDPMScheduler)
for s in $("$DFX" samplers | awk 'NR > 1 && $5 != "dale" {print $1}'); do
    case $s in adls | aums) continue ;; esac
    expect 0 "samples of diffusers" -- "$DFX" sample --model "$D/attn" --sampler "$s" --steps 6 \
        --n 2 --out "$TMP/$s.png"
done
expect 0 "ddpm" -- "$DFX" sample --model "$D/attn" --n 2 --steps 6 --out "$TMP/default.png"
expect 0 "kind         diffusers" -- "$DFX" info --model "$D/unet_only"
expect 0 "samples" -- "$DFX" sample --model "$D/cond" --class 2 --guidance 1.5 --n 2 --steps 4 \
    --out "$TMP/cond.png"

# the cross-framework run: same noise, same schedule, 10 ddim steps
expect 0 "ddim" -- "$DFX" sample --model "$D/attn" --scheduler "$D/runs/ddim_leading.scheduler.json" \
    --init "$D/runs/attn.init.npy" --n 4 --steps 10 --out "$TMP/i.png" --npy "$TMP/i.npy"
if command -v python3 >/dev/null && python3 -c 'import numpy' 2>/dev/null; then
    expect 0 "ok" -- python3 -c "
import numpy as np
a = np.load('$TMP/i.npy'); r = np.load('$D/runs/ddim_leading.npy')
d = abs(a - r).max(); print('max diff', d); assert d <= 1e-3 * max(1, abs(r).max()); print('ok')"
fi
# too few rows of noise: refused naming --init
expect 1 "--init holds start noise for 4 samples" -- "$DFX" sample --model "$D/attn" \
    --init "$D/runs/attn.init.npy" --n 5 --steps 2 --out "$TMP/j.png"

# convert: the native file samples exactly as the folder
expect 0 "wrote" -- "$DFX" convert --model "$D/noattn_rgb" --out "$TMP/n.safetensors"
expect 0 "converted_from|diffusers" -- "$DFX" info --model "$TMP/n.safetensors"
"$DFX" sample --model "$D/noattn_rgb" --n 3 --steps 5 --out "$TMP/a.png" --npy "$TMP/a.npy" --quiet
"$DFX" sample --model "$TMP/n.safetensors" --n 3 --steps 5 --out "$TMP/b.png" --npy "$TMP/b.npy" --quiet
if ! cmp -s "$TMP/a.npy" "$TMP/b.npy"; then
    echo "FAIL: the converted file does not sample as the folder does"
    fails=$((fails + 1))
fi
expect 1 "--scheduler applies to diffusers models" -- "$DFX" sample --model "$TMP/n.safetensors" \
    --scheduler "$D/runs/ddim_leading.scheduler.json" --n 1 --out "$TMP/c.png"

# a scheduler class difflux does not match: said, and sampled by the default sampler
rm -rf "$TMP/pndm" && cp -r "$D/attn" "$TMP/pndm"
sed -i 's/"DDPMScheduler"/"PNDMScheduler"/' "$TMP/pndm/scheduler/scheduler_config.json"
expect 0 "PNDMScheduler .*a scheduler difflux has no sampler for" -- "$DFX" info --model "$TMP/pndm"
expect 0 "heun" -- "$DFX" sample --model "$TMP/pndm" --n 1 --steps 2 --out "$TMP/pndm.png"

# refusals, each naming the key and its value
bad() { # bad NAME SED-EXPRESSION PATTERN [scheduler]
    rm -rf "$TMP/$1" && cp -r "$D/attn" "$TMP/$1"
    sed -i "$2" "$TMP/$1/${4:-unet/config.json}"
    expect 1 "$3" -- "$DFX" info --model "$TMP/$1"
}
bad cross 's/"AttnDownBlock2D"/"CrossAttnDownBlock2D"/' 'down_block_types\[1\] = "CrossAttnDownBlock2D" is not supported'
bad act 's/"act_fn": "silu"/"act_fn": "gelu"/' 'act_fn = "gelu" is not supported'
bad shift 's/"resnet_time_scale_shift": "default"/"resnet_time_scale_shift": "scale_shift"/' 'resnet_time_scale_shift = "scale_shift"'
bad fourier 's/"time_embedding_type": "positional"/"time_embedding_type": "fourier"/' 'time_embedding_type = "fourier"'
bad extra 's/"act_fn"/"cross_attention_dim": 768, "act_fn"/' 'cross_attention_dim = 768 is not supported'
bad sched 's/"epsilon"/"flow"/' 'prediction_type = "flow" is not one of' scheduler/scheduler_config.json
bad beta 's/"linear"/"sigmoid"/' 'beta_schedule = "sigmoid"' scheduler/scheduler_config.json
# a missing or misshapen tensor is named
rm -rf "$TMP/trunc" && cp -r "$D/attn" "$TMP/trunc"
python3 - "$TMP/trunc/unet/diffusion_pytorch_model.safetensors" <<'PY' 2>/dev/null && expect 1 "missing tensor 'conv_out.bias'" -- "$DFX" info --model "$TMP/trunc"
import sys
from safetensors.numpy import load_file, save_file
t = load_file(sys.argv[1]); del t["conv_out.bias"]; save_file(t, sys.argv[1])
PY

if [ $fails -ne 0 ]; then
    echo "test_diffusers_cli: $fails check(s) failed"
    exit 1
fi
echo "test_diffusers_cli: all checks passed"
