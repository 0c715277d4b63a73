#!/usr/bin/env bash
# Commits the checkpoints in models/checkpoints/*.pt and then takes them out
# of the working tree again (they stay on disk and in the history; restore.sh
# brings them back in a fresh checkout). See restore.sh for why.
set -euo pipefail
cd "$(git -C "$(dirname "$0")" rev-parse --show-toplevel)"
shopt -s nullglob
# only the checkpoints that differ from their newest committed version
# (restore.sh brings back all of them; storing an unchanged one again would
# add its megabytes to the submission's diffs twice)
pts=()
for f in models/checkpoints/*.pt; do
    rev=$(git log --all -1 --format=%H --diff-filter=AM -- "$f")
    if [ -n "$rev" ] && [ "$(git hash-object "$f")" = "$(git rev-parse "$rev:$f")" ]; then continue; fi
    pts+=("$f")
done
[ ${#pts[@]} -gt 0 ] || { echo "no changed checkpoints to store"; exit 0; }
git diff --cached --quiet || { echo "store.sh: commit or unstage what is staged first"; exit 1; }
git add -f "${pts[@]}"
git commit -q -m "Training checkpoints: ${*:-$(basename -a "${pts[@]}" | tr '\n' ' ')}"
git rm -q --cached "${pts[@]}"
git commit -q -m "Checkpoints back out of the working tree (models/checkpoints/restore.sh)"
echo "stored ${#pts[@]} checkpoint(s) at $(git log -2 --format=%h | tail -1)"
