#!/usr/bin/env bash
# Commits the checkpoints in models/checkpoints/*.pt and then takes them out
# of the working tree again (they stay on disk and in the history; restore.sh
# brings them back in a fresh checkout). See restore.sh for why.
set -euo pipefail
cd "$(git -C "$(dirname "$0")" rev-parse --show-toplevel)"
shopt -s nullglob
pts=(models/checkpoints/*.pt)
[ ${#pts[@]} -gt 0 ] || { echo "no checkpoints to store"; exit 0; }
git diff --cached --quiet || { echo "store.sh: commit or unstage what is staged first"; exit 1; }
git add -f "${pts[@]}"
git commit -q -m "Training checkpoints: ${*:-$(basename -a "${pts[@]}" | tr '\n' ' ')}"
git rm -q --cached "${pts[@]}"
git commit -q -m "Checkpoints back out of the working tree (models/checkpoints/restore.sh)"
echo "stored ${#pts[@]} checkpoint(s) at $(git log -2 --format=%h | tail -1)"
