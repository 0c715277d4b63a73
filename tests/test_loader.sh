#!/usr/bin/env bash
# Inputs that are not regular files: a FIFO named by --model (or as an IDX
# or .npy input) used to block for ever, opened before it was checked. Each
# must now be refused at once, naming the file (timeout: a hang fails).
# usage: test_loader.sh path/to/difflux source-dir
set -u
DFX=$1
SRC=$2
TMP=$(mktemp -d /tmp/difflux-test-loader-XXXXXX)
trap 'rm -rf "$TMP"' EXIT
fails=0

. "$(dirname "$0")/expect.sh"

mkfifo "$TMP/fifo"
MODEL=$SRC/models/mnist-gmm.safetensors
expect 1 "$TMP/fifo: not a regular file \(a FIFO\)" -- timeout 20 "$DFX" info --model "$TMP/fifo"
expect 1 "$TMP/fifo: not a regular file \(a FIFO\)" -- timeout 20 "$DFX" sample --model "$TMP/fifo" --n 1 --out "$TMP/x.png"
expect 1 "$TMP/fifo: not a regular file \(a FIFO\)" -- timeout 20 "$DFX" make-gmm --images "$TMP/fifo" --out "$TMP/g.safetensors"
expect 1 "$TMP/fifo: not a regular file \(a FIFO\)" -- timeout 20 "$DFX" eval --model "$MODEL" --samples "$TMP/fifo"
expect 1 "$TMP: not a regular file \(a directory\)" -- timeout 20 "$DFX" info --model "$TMP"
expect 1 "/dev/null: not a regular file \(a character device\)" -- timeout 20 "$DFX" info --model /dev/null
# a regular file still loads
expect 0 "gmm" -- timeout 60 "$DFX" info --model "$MODEL"

if [ $fails -ne 0 ]; then
    echo "test_loader: $fails check(s) failed"
    exit 1
fi
echo "test_loader: all checks passed"
