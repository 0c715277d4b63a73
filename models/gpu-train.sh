#!/usr/bin/env bash
# Train the recipes side by side on one GPU for a few minutes each, resuming
# from models/checkpoints, and bring back what a session commits: the
# exported models, the logs and the checkpoints (split into pieces of at
# most 15 MiB, the largest file the device tool returns; join them with
# `cat NAME.pt.part-* > models/checkpoints/NAME.pt`).
#
# Prepared for the GPU machine (see models/checkpoints/README.md):
#   mkdir -p .data && cp /usr/share/datasets/fashion-mnist/train-*-ubyte.gz .data/
#   device run: command "models/gpu-train.sh 8", carry [".data"]
# Environment: MINUTES (or $1, default 8), RECIPES (default: every unet
# recipe with a checkpoint or not yet trained), DEVICE (cuda), OUT ($OUT or
# gpu-out/).
set -u
cd "$(dirname "$0")/.."
MINUTES=${1:-${MINUTES:-8}}
DEVICE=${DEVICE:-cuda}
OUT=${OUT:-gpu-out}
RECIPES=${RECIPES:-"mnist-flow mnist-vp mnist-cond mnist-dale fashion-flow fashion-dale"}
PY=${PYTHON:-python3}
mkdir -p "$OUT" models/checkpoints
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader > "$OUT/gpu.txt" 2>&1 || true
start=$(date +%s)
pids=()
for r in $RECIPES; do
    "$PY" -m models.difflux_ref.train --config "models/configs/$r.json" --device "$DEVICE" \
        --minutes "$MINUTES" --data-root .data >> "models/checkpoints/$r.log" 2>&1 &
    pids+=($!)
done
rc=0
for p in "${pids[@]}"; do wait "$p" || rc=1; done
echo "trained ${RECIPES} for ${MINUTES} min each on ${DEVICE} in $(( $(date +%s) - start )) s (rc $rc)" | tee "$OUT/summary.txt"
for r in $RECIPES; do
    [ -f "models/$r.safetensors" ] && cp "models/$r.safetensors" "$OUT/"
    cp "models/checkpoints/$r.log" "$OUT/$r.log"
    if [ -f "models/checkpoints/$r.pt" ]; then
        split -b 15M -d "models/checkpoints/$r.pt" "$OUT/$r.pt.part-"
    fi
    tail -n 1 "models/checkpoints/$r.log" >> "$OUT/summary.txt"
done
exit $rc
