# Shared by the shell tests (sourced).
# expect CODE PATTERN -- command...: exit status CODE ("nz" = any non-zero)
# and stderr+stdout matching PATTERN.
expect() {
    local code=$1 pat=$2
    shift 3
    local out rc
    out=$("$@" 2>&1)
    rc=$?
    local ok=1
    if [ "$code" = nz ]; then [ $rc -ne 0 ] || ok=0; else [ $rc -eq "$code" ] || ok=0; fi
    if [ $ok -eq 1 ] && ! grep -qE -- "$pat" <<<"$out"; then ok=0; fi
    if [ $ok -eq 0 ]; then
        echo "FAIL: $* -> exit $rc, expected $code and /$pat/; output:"
        echo "$out" | head -5
        fails=$((fails + 1))
    fi
}
# a number from a one-line JSON object (eval's --json): field FILE KEY
field() { sed -E "s/.*\"$2\": ([^,}]+).*/\1/" "$1"; }
# awk comparison: holds "expr"
holds() { awk "BEGIN { exit !($1) }"; }
