#!/usr/bin/env bash
# Hardening of the command-line tool (issue #17): bad options and output
# paths are refused before any network evaluation; outputs never name the
# same file; SIGINT/SIGTERM leave no temporary behind and SIGKILL's are
# cleaned up by the next run; a run's outputs are renamed together; NaN
# messages name the model; a run beyond the memory is refused up front;
# unstable em grids are refused and far-out samples flagged (issue #23).
# usage: test_cli_hardening.sh path/to/difflux source-dir
set -u
DFX=$(cd "$(dirname "$1")" && pwd)/$(basename "$1") # absolute: the test works in a temp dir
SRC=$(cd "$2" && pwd)
GMM=$SRC/models/mnist-gmm.safetensors
FLOW=$SRC/models/mnist-flow.safetensors
TMP=$(mktemp -d /tmp/difflux-test-hardening-XXXXXX)
trap 'rm -rf "$TMP"' EXIT
fails=0
. "$(dirname "$0")/expect.sh"
fail() {
    echo "FAIL: $*"
    fails=$((fails + 1))
}
cd "$TMP" || exit 1
# With job control a background job keeps SIGINT (a script's background
# jobs otherwise ignore it, and difflux leaves an ignored signal ignored).
set -m

# quick CODE PATTERN -- CMD...: like expect, and it must finish within 20 s
# (it is stopped after $QUICK_TIMEOUT, 60 s). Every run below
# asks for 10^6 steps, which would sample for many minutes: a quick refusal
# shows the check ran before the work.
quick() {
    local code=$1 pat=$2 t0=$SECONDS
    shift 3
    expect "$code" "$pat" -- timeout "${QUICK_TIMEOUT:-60}" "$@"
    [ $((SECONDS - t0)) -le 20 ] || fail "slow refusal ($((SECONDS - t0)) s): $*"
}
LONG=(--steps 1000000)

# ---- 8: checks before the work
quick 2 "--scale must be in \[1, 64\], got 65" -- "$DFX" sample --model "$GMM" --n 2 "${LONG[@]}" --scale 65
quick 2 "--pad must be in \[0, 1000\], got 1001" -- "$DFX" sample --model "$GMM" --n 2 "${LONG[@]}" --pad 1001
quick 1 "directory 'nodir' does not exist" -- "$DFX" sample --model "$GMM" --n 2 "${LONG[@]}" --out nodir/x.png
quick 1 "--npy: cannot write 'nodir/x.npy'.*does not exist" -- "$DFX" sample --model "$GMM" --n 2 "${LONG[@]}" --no-png --npy nodir/x.npy
touch plain
quick 1 "'plain' is not a directory" -- "$DFX" sample --model "$GMM" --n 2 "${LONG[@]}" --out plain/x.png
mkdir adir
quick 2 "names a directory" -- "$DFX" sample --model "$GMM" --n 2 "${LONG[@]}" --out adir
quick 1 "grid of .* pixels is too large" -- "$DFX" sample --model "$GMM" --n 5000 --scale 64 "${LONG[@]}"
quick 1 "--plot: cannot write 'nodir/p.png'" -- "$DFX" sweep --model "$GMM" --n 10 --plot nodir/p.png
quick 1 "--csv: cannot write 'nodir/s.csv'" -- "$DFX" sweep --model "$GMM" --n 10 --csv nodir/s.csv
quick 1 "--json: cannot write 'nodir/e.json'" -- "$DFX" eval --model "$GMM" --n 10 "${LONG[@]}" --json nodir/e.json
quick 1 "--json: cannot write 'nodir/b.json'" -- "$DFX" bench --model "$GMM" --steps 1000000 --json nodir/b.json
quick 1 "--csv: cannot write 'nodir/c.csv'" -- "$DFX" conservativity --model "$GMM" --steps 1000000 --csv nodir/c.csv
quick 1 "--out: cannot write 'nodir/g.safetensors'" -- "$DFX" make-gmm --count 2 --out nodir/g.safetensors
quick 2 "unknown --sampler 'nope'" -- "$DFX" bench --model "$GMM" --sampler nope
quick 2 "--t: 2 is outside" -- "$DFX" conservativity --model "$GMM" --t 0.5,2
# a 2-channel model: 2 x 14 x 28 holds the same 784 values as 1 x 28 x 28
if "$DFX" make-gmm --count 3 --out g1.safetensors >/dev/null; then
    sed 's/\\"channels\\":1,\\"height\\":28,/\\"channels\\":2,\\"height\\":14,/' g1.safetensors |
        sed 's/"shape":\[3,1,28,28\]/"shape":[3,2,14,28]/' >g2.safetensors
    if "$DFX" info --model g2.safetensors | grep -q '^image *2 x 14 x 28'; then
        quick 1 "PNG grid needs 1, 3 or 4 channels, the model has 2 .*--no-png" -- "$DFX" sample --model g2.safetensors --n 2 "${LONG[@]}"
        expect 0 "" -- "$DFX" sample --model g2.safetensors --n 2 --steps 2 --no-png --npy two.npy
    else
        fail "could not make a 2-channel mixture"
    fi
else
    fail "make-gmm"
fi
[ ! -e grid.png ] || fail "a refused run wrote grid.png"

# ---- 9: numbers that strtoull would take
expect 2 "--seed expects a non-negative integer \(digits only\), got ' -1'" -- "$DFX" sample --model "$GMM" --seed " -1"
expect 2 "--seed expects a non-negative integer" -- "$DFX" sample --model "$GMM" --seed=-1
expect 2 "--start-index expects a non-negative integer" -- "$DFX" sample --model "$GMM" --start-index " 5"
expect 2 "--n expects a number without leading blanks" -- "$DFX" sample --model "$GMM" --n " 5"
expect 2 "--start-index 18446744073709551615 with --n 2 runs past the last sample index" -- "$DFX" sample --model "$GMM" --n 2 --start-index 18446744073709551615
expect 2 "--start-index 18446744073709551615 with --n 2" -- "$DFX" eval --model "$GMM" --n 2 --start-index 18446744073709551615
expect 0 "" -- "$DFX" sample --model "$GMM" --n 2 --steps 2 --start-index 18446744073709551614 --out last.png

# ---- 10: outputs naming one file
quick 2 "--out 'x.png' and --npy 'x.png' name the same file" -- "$DFX" sample --model "$GMM" --n 2 "${LONG[@]}" --npy x.png --out x.png
quick 2 "name the same file" -- "$DFX" sample --model "$GMM" --n 2 "${LONG[@]}" --npy ./x.png --out x.png
quick 2 "name the same file" -- "$DFX" sample --model "$GMM" --n 2 "${LONG[@]}" --npy adir/../x.png --out "$TMP/x.png"
ln -s adir alias
quick 2 "name the same file" -- "$DFX" sample --model "$GMM" --n 2 "${LONG[@]}" --npy alias/y --out adir/y
echo old >hard1
ln hard1 hard2
quick 2 "name the same file" -- "$DFX" sample --model "$GMM" --n 2 "${LONG[@]}" --npy hard1 --out hard2
cp "$GMM" model.safetensors
quick 2 "would overwrite the input --model" -- "$DFX" sample --model model.safetensors --n 2 "${LONG[@]}" --out ./model.safetensors
quick 2 "--save-samples 'e.json' and --json 'e.json' name the same file" -- "$DFX" eval --model "$GMM" --n 10 "${LONG[@]}" --save-samples e.json --json e.json
quick 2 "--csv 'c.out' and --plot 'c.out'" -- "$DFX" conservativity --model "$GMM" --csv c.out --plot c.out
quick 2 "would overwrite the input --images" -- "$DFX" make-gmm --count 2 --images "$TMP/hard1" --out hard1
[ ! -e x.png ] && [ "$(cat hard1)" = old ] || fail "a refused run wrote its output"

# ---- 11: --threads
quick 2 "--threads must be in \[0, 1024\] \(0 = all [0-9]+ cores\), got 2147483647" -- "$DFX" sample --model "$GMM" --n 2 "${LONG[@]}" --threads 2147483647
quick 2 "--threads must be in \[0, 1024\]" -- "$DFX" bench --model "$GMM" --threads 100000
quick 2 "--threads must be in \[0, 1024\]" -- "$DFX" conservativity --model "$GMM" --threads -1
quick 2 "--threads must be in \[0, 1024\]" -- "$DFX" eval --model "$GMM" --threads 5000

# ---- 12: signals and temporaries
tmps() { find "${1:-.}" -maxdepth 1 \( -name '*difflux-tmp*' -o -name '*.tmp*' \); }
# whether process $1 catches signal $2, waited for at most 60 s (Linux:
# the SigCgt mask of /proc/PID/status)
caught() {
    local bit=$(( 1 << ($(kill -l "$2") - 1) )) i mask
    for i in $(seq 600); do
        mask=$(awk '/^SigCgt:/ {print $2}' "/proc/$1/status" 2>/dev/null) || return 1
        [ -n "$mask" ] && (( 16#$mask & bit )) && return 0
        sleep 0.1
    done
    return 1
}
# a long sampling run, stopped: exit 128 + signal, a message, nothing left
for sig in TERM INT; do
    rm -f sig.png sig.npy sig.err
    "$DFX" sample --model "$FLOW" --n 4 --steps 5000 --out sig.png --npy sig.npy 2>sig.err &
    pid=$!
    # until its handler is installed (a loaded machine may take seconds to
    # get there; before, the signal would kill it without a message)
    caught "$pid" "$sig" || fail "SIG$sig: no handler after 60 s"
    sleep 0.5
    t0=$SECONDS
    kill -$sig $pid
    wait $pid
    rc=$?
    want=$((128 + $(kill -l $sig)))
    [ $rc -eq $want ] || fail "SIG$sig: exit $rc, expected $want"
    [ $((SECONDS - t0)) -le 5 ] || fail "SIG$sig: took $((SECONDS - t0)) s to stop"
    grep -q "SIG$sig" sig.err || fail "SIG$sig: no message ($(cat sig.err))"
    [ -z "$(tmps)" ] && [ ! -e sig.png ] && [ ! -e sig.npy ] || fail "SIG$sig left files: $(ls -a)"
done
# killed while its outputs are temporaries: eval holds --save-samples until
# the --json report is written, and renames both together
mkdir grp
echo old-npy >grp/s.npy
echo old-json >grp/s.json
wait_tmp() { # until a temporary appears in $1 (at most 60 s)
    for _ in $(seq 1200); do
        [ -n "$(find "$1" -name '*difflux-tmp*')" ] && return 0
        kill -0 "$2" 2>/dev/null || return 1
        sleep 0.05
    done
    return 1
}
for sig in TERM INT KILL; do
    "$DFX" eval --model "$GMM" --n 1000 --steps 1 --quiet --save-samples grp/s.npy --json grp/s.json >/dev/null 2>grp.err &
    pid=$!
    if ! wait_tmp grp $pid; then
        fail "SIG$sig: eval wrote no temporary ($(cat grp.err))"
        wait $pid
        continue
    fi
    t=$(find grp -name '*difflux-tmp*')
    case $t in grp/.s.npy.difflux-tmp-$pid-*) ;; *) fail "temporary named '$t'" ;; esac
    kill -$sig $pid
    wait $pid
    rc=$?
    [ $rc -eq $((128 + $(kill -l $sig))) ] || fail "eval SIG$sig: exit $rc"
    [ "$(cat grp/s.npy)" = old-npy ] && [ "$(cat grp/s.json)" = old-json ] ||
        fail "SIG$sig: outputs replaced one without the other"
    if [ $sig = KILL ]; then
        [ -n "$(find grp -name '*difflux-tmp*')" ] || fail "SIGKILL: no temporary to clean up"
    else
        [ -z "$(tmps grp)" ] || fail "SIG$sig left $(tmps grp)"
    fi
done
# the next run in that directory removes the dead process's temporary, and
# one of a live process (this shell) stays; the outputs are renamed together
touch "grp/.x.png.difflux-tmp-999999999-AbCdEf" "grp/.y.png.difflux-tmp-$$-AbCdEf"
expect 0 "" -- "$DFX" eval --model "$GMM" --n 20 --steps 1 --quiet --no-nn --kid-size 10 --save-samples grp/s.npy --json grp/s.json
left=$(find grp -name '*difflux-tmp*' | sort)
[ "$left" = "grp/.y.png.difflux-tmp-$$-AbCdEf" ] || fail "stale temporaries: left '$left'"
[ "$(head -c 6 grp/s.npy | tail -c 5)" = NUMPY ] && grep -q '"fid"' grp/s.json ||
    fail "eval did not write both outputs"
expect 0 "" -- "$DFX" sample --model "$GMM" --n 2 --steps 2 --out ok.png --npy ok.npy
[ -s ok.png ] && [ -s ok.npy ] && [ -z "$(tmps)" ] || fail "sample: outputs or temporaries wrong: $(ls -a)"

# ---- 14: NaN messages name the model, and say whose fault it is
expect 1 "model $GMM, sampler em: .*NaN/Inf .* after step [0-9] of 4 .*try more steps" -- "$DFX" sample --model "$GMM" --n 2 --sampler em --steps 4 --eps0 1e38 --allow-unstable --out nan.png
have_py=0
command -v python3 >/dev/null && have_py=1
# surgery on a shipped U-Net: $1 -> $2 with height = width = $3 and the
# first convolution's weights all 3e38 when $4 > 1 (the sums overflow)
unet() {
    python3 - "$@" <<'EOF'
import json, struct, sys
src, dst, side, mult = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
b = bytearray(open(src, 'rb').read())
n = struct.unpack('<Q', b[:8])[0]
h = json.loads(b[8:8 + n])
c = json.loads(h['__metadata__']['config'])
c['image']['height'] = c['image']['width'] = side
h['__metadata__']['config'] = json.dumps(c)
lo, hi = h['conv_in.weight']['data_offsets']
w = struct.unpack('<%df' % ((hi - lo) // 4), b[8 + n + lo:8 + n + hi])
b[8 + n + lo:8 + n + hi] = struct.pack("<%df" % len(w), *[3e38 if mult > 1 else v for v in w])
t = json.dumps(h).encode()
t += b' ' * ((8 - len(t) % 8) % 8)
open(dst, 'wb').write(struct.pack('<Q', len(t)) + t + bytes(b[8 + n:]))
EOF
}
if [ $have_py = 1 ]; then
    unet "$FLOW" broken.safetensors 28 2
    quick 1 "model broken.safetensors itself produces NaN/Inf: .*first evaluation .*more steps will not help" -- "$DFX" sample --model broken.safetensors --n 2 "${LONG[@]}" --out nan.png
else
    echo "skipped: the broken-model checks need python3"
fi

# ---- 15: memory
expect 0 "^memory +weights .*at batch 1, .*at batch 64" -- "$DFX" info --model "$FLOW"
expect 0 "difflux: memory: about .*\(weights .*network scratch" -- "$DFX" sample --model "$GMM" --n 2 --steps 2 --out m.png --verbose
quick 2 "--max-memory expects a size like 8G" -- "$DFX" sample --model "$GMM" --max-memory 8X
quick 2 "--max-memory expects a size" -- "$DFX" sample --model "$GMM" --max-memory -1G
quick 1 "needs about .* more than --max-memory 1 KiB" -- "$DFX" sample --model "$GMM" --n 2 "${LONG[@]}" --max-memory 1K
quick 1 "needs about .* more than --max-memory" -- "$DFX" bench --model "$GMM" --max-memory 1M
quick 1 "needs about .* more than --max-memory" -- "$DFX" conservativity --model "$GMM" --max-memory 1M
quick 1 "needs about .* more than --max-memory" -- "$DFX" eval --model "$GMM" --n 10 --max-memory 1M
if [ $have_py = 1 ]; then
    # a 4 MB U-Net that declares 4096 x 4096 images: terabytes of scratch
    unet "$FLOW" huge.safetensors 4096 1
    expect 0 "^memory .* [0-9.]+ TiB at batch 64" -- "$DFX" info --model huge.safetensors
    quick 1 "model huge.safetensors .*needs about [0-9.]+ TiB more, but the machine has .* (available|physical)" -- "$DFX" sample --model huge.safetensors --n 1 --no-png --npy h.npy "${LONG[@]}"
    quick 1 "needs about [0-9.]+ TiB more" -- "$DFX" bench --model huge.safetensors --batch 1
fi
for c in sample eval sweep bench conservativity; do
    expect 0 "--max-memory SIZE" -- "$DFX" $c --help
    expect 0 "--threads T +CPU threads, at most 1024" -- "$DFX" $c --help
done
expect 0 "--scale K +upscale each pixel to K x K, 1 to 64" -- "$DFX" sample --help
expect 0 "renamed into place together" -- "$DFX" sample --help

# ---- 16: no silent numerical failure (issue #23): the explicit em step's
# stability bound eps h / s^2 < 2 is checked on the grid before sampling
# (refused when an error could grow more than 10-fold, warned above 2), and
# samples far outside the data range are reported for every sampler.
# --noise const on an interpolant at the default t_data: eps h / s^2 = 21.8
# on the default logsnr grid (222 on the uniform one); refused at once,
# with the way out, no output
for s in em pc; do
    rm -f unstable.png
    quick 1 "sampler $s with --noise const is unstable on this grid: eps h / s\^2 reaches 21\.8 at t = 0\.998.*stable below 2.*--noise s .*--steps.*--allow-unstable" -- "$DFX" sample --model "$GMM" --n 2 --sampler $s --noise const --out unstable.png
    [ ! -e unstable.png ] || fail "$s --noise const: refused, but wrote unstable.png"
done
# the bound is exceeded slightly (r = 2.14, growth 1.14): it runs, with a warning
expect 0 "warning: em: eps h / s\^2 reaches 2\.14 at t = 0\.855 .*more --steps, --noise s" -- "$DFX" sample --model "$GMM" --n 2 --sampler em --noise const --grid uniform --steps 20 --t-data 0.9 --out w.png
# the stable default (--noise s) neither warns nor refuses
out=$("$DFX" sample --model "$GMM" --n 4 --sampler em --out ok.png 2>&1) || fail "em --noise s failed: $out"
grep -q "warning" <<<"$out" && fail "em at its defaults warns: $out"
# --allow-unstable runs it; what comes out is flagged: far outside [-1, 1]
expect 0 "warning: [0-9]+ of 3136 values .* lie far outside the data range \[-1, 1\], beyond \[-3, 3\] \(largest \|x\| [0-9.e+]+\): the em sampler may have diverged" -- "$DFX" sample --model "$GMM" --n 4 --sampler em --noise const --grid uniform --steps 40 --t-data 0.98 --no-denoise --allow-unstable --out w.png
# ... for every sampler: one Euler step over all of VE's sigma range
expect 0 "warning: [0-9]+ of 3136 values .* lie far outside the data range .*the euler sampler" -- "$DFX" sample --model "$GMM" --n 4 --path ve --sampler euler --steps 1 --no-denoise --out w.png
# and a good run of the same sampler is not flagged
out=$("$DFX" sample --model "$GMM" --n 4 --path ve --sampler euler --out ok.png 2>&1) || fail "euler on ve failed: $out"
grep -q "far outside" <<<"$out" && fail "a good euler run is flagged: $out"

if [ $fails -gt 0 ]; then
    echo "$fails CLI hardening checks failed"
    exit 1
fi
echo "all CLI hardening checks passed"
