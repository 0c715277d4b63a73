#!/usr/bin/env bash
# Brings back the newest committed version of every training checkpoint.
#
# Checkpoints (NAME.pt, 10-18 MB each) are committed for a moment and then
# taken out of the working tree again (store.sh): they live in the git
# history, so training continues across sessions, while the checkout stays
# small enough to travel to the GPU machine (64 MiB with everything it
# carries). Run this before resuming a recipe.
set -euo pipefail
cd "$(git -C "$(dirname "$0")" rev-parse --show-toplevel)"
git log --all --format= --name-only --diff-filter=AM -- 'models/checkpoints/*.pt' | sort -u |
while read -r f; do
    [ -n "$f" ] || continue
    rev=$(git log --all -1 --format=%H --diff-filter=AM -- "$f")
    git show "$rev:$f" >"$f.tmp" && mv "$f.tmp" "$f"
    echo "$f <- $(git log -1 --format='%h %cs' "$rev")"
done
