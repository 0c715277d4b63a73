#!/usr/bin/env bash
# The command-line tool: every bad input gives one clear message and a
# non-zero exit; the good paths write what they promise.
# usage: test_cli.sh path/to/difflux source-dir
set -u
DFX=$1
SRC=$2
MODEL=$SRC/models/mnist-gmm.safetensors
TMP=$(mktemp -d /tmp/difflux-test-cli-XXXXXX)
trap 'rm -rf "$TMP"' EXIT
fails=0

. "$(dirname "$0")/expect.sh"

# The device that --device auto (the default) must pick: cuda where this
# build has the CUDA backend and nvidia-smi sees a GPU, else cpu.
# DIFFLUX_TEST_DEVICE overrides the guess. A GPU that difflux cannot use
# (a driver too old for the toolkit) then fails the checks below loudly
# instead of passing them on the CPU.
AUTO=cpu
if "$DFX" --version | grep -q "cpu and cuda" && nvidia-smi -L 2>/dev/null | grep -q '^GPU'; then
    AUTO=cuda
fi
AUTO=${DIFFLUX_TEST_DEVICE:-$AUTO}

# usage errors: exit 2
expect 2 "unknown command 'frobnicate'" -- "$DFX" frobnicate
expect 2 "usage: difflux COMMAND" -- "$DFX"
expect 2 "unknown option '--bogus'" -- "$DFX" sample --bogus
expect 2 "--steps expects an integer, got 'abc'" -- "$DFX" sample --steps abc
expect 2 "--steps expects an integer, got '12x'" -- "$DFX" sample --steps 12x
expect 2 "--seed expects a non-negative integer" -- "$DFX" sample --seed -3
expect 2 "--eps0 expects a number, got 'nan'" -- "$DFX" sample --eps0 nan
expect 2 "--n must be at least 1" -- "$DFX" sample --n 0
expect 2 "--batch must be at least 1" -- "$DFX" sample --batch 0
expect 2 "--model needs a value" -- "$DFX" sample --model
expect 2 "unexpected argument 'extra'" -- "$DFX" sample extra
expect 2 "unknown --sampler 'nope'" -- "$DFX" sample --sampler nope
expect 2 "unknown --grid 'zigzag'" -- "$DFX" sample --grid zigzag
expect 2 "unknown --path 'banana'" -- "$DFX" sample --path banana
expect 2 "--no-png without --npy" -- "$DFX" sample --no-png
expect 2 "--out and --no-png contradict" -- "$DFX" sample --no-png --out a.png --npy a.npy
expect 2 "--quiet takes no value" -- "$DFX" sample --quiet=1
expect 2 "--out FILE is required" -- "$DFX" make-gmm
expect 2 "unknown option" -- "$DFX" info --nope

# runtime errors: exit 1, naming the file or option
expect 1 "DIFFLUX_ISA=sse9: unknown path" -- env DIFFLUX_ISA=sse9 "$DFX" sample --model "$MODEL" --n 1 --out "$TMP/isa.png"
expect 0 "CPU path (baseline|avx2|avx512)" -- "$DFX" --version
expect 0 "CPU path baseline" -- env DIFFLUX_ISA=baseline "$DFX" --version
[ ! -e "$TMP/isa.png" ] || { echo "FAIL: a refused DIFFLUX_ISA still wrote a grid"; fails=$((fails + 1)); }
expect 1 "cannot open model file '$TMP/none.safetensors'" -- "$DFX" sample --model "$TMP/none.safetensors"
head -c 100 /dev/urandom >"$TMP/garbage.safetensors"
expect 1 "$TMP/garbage.safetensors" -- "$DFX" sample --model "$TMP/garbage.safetensors"
expect 1 "$TMP/garbage.safetensors" -- "$DFX" info --model "$TMP/garbage.safetensors"
head -c 1000 "$MODEL" >"$TMP/truncated.safetensors"
expect 1 "truncated" -- "$DFX" info --model "$TMP/truncated.safetensors"
expect 2 "--steps must be at least 1" -- "$DFX" sample --model "$MODEL" --steps 0 --out "$TMP/x.png"
expect 1 "unknown device 'tpu'" -- "$DFX" sample --device tpu
if [ "$AUTO" = cuda ]; then
    expect 0 "heun on cuda" -- "$DFX" sample --device cuda --n 1 --steps 2 --out "$TMP/x.png"
else
    expect 1 "(no CUDA backend|no CUDA device)" -- "$DFX" sample --device cuda --n 1 --out "$TMP/x.png"
fi
expect 1 "unknown precision 'fp16'" -- "$DFX" sample --precision fp16 --device cpu --n 1 --out "$TMP/x.png"
expect 1 "the cpu backend computes in fp32 only" -- "$DFX" bench --precision bf16 --device cpu
expect 1 "karras grid needs a finite noise level.*--t-data" -- "$DFX" sample --n 2 --grid karras --t-data 1 --out "$TMP/x.png"
expect 1 "need --t-data > --t-noise" -- "$DFX" sample --n 2 --t-noise 0.9 --t-data 0.1 --out "$TMP/x.png"
expect 1 "fitted start distribution is for t = 1, not --t-noise 0.5.*--path-start" -- "$DFX" sample --model "$SRC/models/mnist-dale.safetensors" --n 2 --t-noise 0.5 --out "$TMP/x.png"
expect 1 "--noise diffusion is inf" -- "$DFX" sample --n 2 --sampler em --noise diffusion --out "$TMP/x.png"
expect 1 "cannot write '$TMP/no/such/dir/g.png'" -- "$DFX" sample --n 2 --steps 2 --out "$TMP/no/such/dir/g.png"
expect 1 "NaN/Inf" -- "$DFX" sample --n 2 --steps 4 --sampler em --eps0 1e38 --allow-unstable --out "$TMP/nan.png"
# a model that overflows to Inf/NaN inside the network (guidance 1e308):
# a clean report, also under the sanitizers (UBSan aborts with "runtime
# error" on an undefined conversion of NaN instead)
expect 1 "NaN/Inf" -- "$DFX" sample --model "$SRC/models/mnist-cond.safetensors" --n 1 --steps 2 --guidance 1e308 --out "$TMP/nan.png"
[ -e "$TMP/nan.png" ] && { echo "FAIL: a failed run left $TMP/nan.png"; fails=$((fails + 1)); }
ls "$TMP" | grep -q tmp && { echo "FAIL: temporary files left: $(ls "$TMP")"; fails=$((fails + 1)); }

# good paths
expect 0 "usage: difflux sample" -- "$DFX" sample --help
expect 0 "usage: difflux info" -- "$DFX" info --help
expect 0 "usage: difflux samplers" -- "$DFX" samplers --help
expect 0 "usage: difflux make-gmm" -- "$DFX" make-gmm --help
expect 0 "commands:" -- "$DFX" --help
expect 0 "^difflux [0-9]" -- "$DFX" --version
expect 0 "euler.*heun.*rk4.*dopri5.*em" -- bash -c "'$DFX' samplers | tr '\n' ' '"
expect 0 "kind +gmm" -- "$DFX" info --model "$MODEL"
expect 0 "gmm.means +F32 +\[300, 1, 28, 28\]" -- "$DFX" info --model "$MODEL" --tensors
expect 0 "-> $TMP/g.png" -- "$DFX" sample --model "$MODEL" --n 6 --steps 4 --out "$TMP/g.png"
head -c 8 "$TMP/g.png" | od -An -c | grep -q "P   N   G" || { echo "FAIL: g.png is not a PNG"; fails=$((fails + 1)); }
expect 0 "$TMP/s.npy" -- "$DFX" sample --model "$MODEL" --n 3 --steps 4 --no-png --npy "$TMP/s.npy" --sampler em --path vp
# 3 samples x 784 floats + a 128-byte header
size=$(stat -c %s "$TMP/s.npy")
[ "$size" -eq $((128 + 3 * 784 * 4)) ] || { echo "FAIL: s.npy has $size bytes"; fails=$((fails + 1)); }
# --guide-model (autoguidance): needs its model, refuses another path; at
# weight 1 the guided run is the model's own, bit for bit
expect 1 "--guide-weight needs --guide-model FILE .*names no guide" -- "$DFX" sample --model "$MODEL" --guide-weight 2 --out "$TMP/guided.png"
expect 2 "--guide-weight expects a number, got .inf." -- "$DFX" sample --model "$MODEL" --guide-model "$MODEL" --guide-weight inf --out "$TMP/guided.png"
expect 1 "--guide-model: guide .*mnist-dale-gmm.safetensors is on the path dale, the model .* on linear" -- "$DFX" sample --model "$MODEL" --guide-model "$SRC/models/mnist-dale-gmm.safetensors" --n 1 --out "$TMP/guided.png"
[ ! -e "$TMP/guided.png" ] || { echo "FAIL: a refused guide still wrote a grid"; fails=$((fails + 1)); }
expect 0 "guided by .* with weight 1" -- "$DFX" sample --model "$MODEL" --guide-model "$MODEL" --guide-weight 1 --n 3 --steps 4 --no-png --npy "$TMP/g1.npy"
"$DFX" sample --model "$MODEL" --n 3 --steps 4 --no-png --npy "$TMP/g0.npy" --quiet
cmp -s "$TMP/g0.npy" "$TMP/g1.npy" || { echo "FAIL: --guide-weight 1 changed the samples"; fails=$((fails + 1)); }
# a model whose config names its guide (fashion-flow) is guided by default;
# --guide-model none samples without it; a copy without the guide beside it
# is refused with the way out
FF=$SRC/models/fashion-flow.safetensors
expect 0 "guided by .*fashion-flow-guide.safetensors with weight 1.5, the model's own guide" -- "$DFX" sample --model "$FF" --n 2 --steps 2 --no-png --npy "$TMP/ffg.npy"
"$DFX" sample --model "$FF" --guide-model none --n 2 --steps 2 --no-png --npy "$TMP/ff0.npy" 2>"$TMP/ff0.err"
! grep -q "guided" "$TMP/ff0.err" && ! cmp -s "$TMP/ffg.npy" "$TMP/ff0.npy" || { echo "FAIL: --guide-model none"; fails=$((fails + 1)); }
expect 2 "--guide-weight contradicts --guide-model none" -- "$DFX" sample --model "$FF" --guide-model none --guide-weight 2 --out "$TMP/guided.png"
mkdir -p "$TMP/alone" && cp "$FF" "$TMP/alone/"
expect 1 "the guide its config names \(--guide-model none samples without it\).*alone/fashion-flow-guide.safetensors" -- "$DFX" sample --model "$TMP/alone/fashion-flow.safetensors" --n 1 --out "$TMP/guided.png"
expect 0 "fashion-flow.safetensors" -- "$DFX" sample --model "$TMP/alone/fashion-flow.safetensors" --guide-model none --n 1 --steps 2 --out "$TMP/alone.png"
# make-gmm writes a model that samples
expect 0 "wrote $TMP/m.safetensors: 20 components" -- "$DFX" make-gmm --images "$SRC/models/data/mnist10k-images-idx3-ubyte.gz" --count 20 --out "$TMP/m.safetensors"
expect 0 "samples/s" -- "$DFX" sample --model "$TMP/m.safetensors" --n 2 --steps 3 --out "$TMP/m.png" --sampler dopri5
expect 1 "only 5 matching images" -- "$DFX" make-gmm --images "$SRC/models/data/mnist10k-images-idx3-ubyte.gz" --labels "$SRC/models/data/mnist10k-labels-idx1-ubyte.gz" --class 3 --offset 1027 --count 10 --out "$TMP/m3.safetensors"
expect 1 "not an IDX file" -- "$DFX" make-gmm --images "$MODEL" --out "$TMP/m4.safetensors"

# U-Net models exported from PyTorch (test fixtures)
UC=$SRC/tests/fixtures/unet_cond.safetensors
UT=$SRC/tests/fixtures/unet_tiny.safetensors
expect 0 "architecture U-Net, 3 levels: 12x12@16\+attn 6x6@32 3x3@32\+attn" -- "$DFX" info --model "$UC"
expect 0 "FLOPs/eval +3.513e\+07" -- "$DFX" info --model "$UC"
expect 0 "-> $TMP/u.png" -- "$DFX" sample --model "$UC" --n 4 --steps 3 --class 1 --guidance 2 --out "$TMP/u.png"
expect 0 "-> $TMP/u.png" -- "$DFX" sample --model "$UT" --n 4 --steps 3 --sampler dopri5 --out "$TMP/u.png"
expect 1 "class 7 out of range \(the model has classes 0..2\)" -- "$DFX" sample --model "$UC" --n 2 --class 7 --out "$TMP/u.png"
expect 2 "--class expects a label" -- "$DFX" sample --model "$UC" --n 2 --class seven --out "$TMP/u.png"
expect 1 "unconditional" -- "$DFX" sample --model "$UT" --n 2 --class 1 --out "$TMP/u.png"
expect 1 "trained on the linear path and cannot be sampled on another" -- "$DFX" sample --model "$UT" --n 2 --path vp --out "$TMP/u.png"
expect 1 "takes no class" -- "$DFX" sample --model "$MODEL" --n 2 --class 3 --out "$TMP/u.png"
expect 1 "the model is unconditional" -- "$DFX" sample --n 2 --class 3 --out "$TMP/u.png"

# the sampler family and the multiplicative (Dale) models
expect 0 "wrote $TMP/dale.safetensors: 20 components of 28 x 28, path dale" -- "$DFX" make-gmm --path dale --range-lo 1 --range-hi 2 --count 20 --out "$TMP/dale.safetensors"
expect 2 "the dale path needs positive data" -- "$DFX" make-gmm --path dale --count 20 --out "$TMP/dale2.safetensors"
expect 0 "info" -- bash -c "'$DFX' info --model '$TMP/dale.safetensors' | grep -q 'dale (multiplicative, sigma 0.8, mu 0.32)' && echo info"
expect 0 "adls on $AUTO" -- "$DFX" sample --model "$TMP/dale.safetensors" --sampler adls --steps 20 --n 2 --npy "$TMP/d.npy" --no-png
expect 0 "aums on $AUTO" -- "$DFX" sample --model "$TMP/dale.safetensors" --sampler aums --recipe paper --steps 10 --n 2 --out "$TMP/d.png"
expect 1 "sampler adls applies to multiplicative models on the dale path; this model is on the linear path" -- "$DFX" sample --sampler adls --n 2 --out "$TMP/x.png"
expect 1 "--recipe applies to the multiplicative samplers" -- "$DFX" sample --recipe paper --n 2 --out "$TMP/x.png"
expect 2 "--delta, --inner and --anneal belong to --recipe paper" -- "$DFX" sample --delta 0.1 --n 2 --out "$TMP/x.png"
expect 2 "unknown --recipe 'best'" -- "$DFX" sample --recipe best --n 2 --out "$TMP/x.png"
expect 1 "--eta must be a number >= 0" -- "$DFX" sample --sampler ddim --eta -1 --n 2 --out "$TMP/x.png"
expect 1 "unknown --variant 'bh1' for deis .tab, logrho." -- "$DFX" sample --model "$MODEL" --sampler deis --variant bh1 --n 2 --out "$TMP/x.png"
expect 1 "--order .1..3. belongs to unipc and deis, not heun" -- "$DFX" sample --model "$MODEL" --sampler heun --order 2 --n 2 --out "$TMP/x.png"
expect 1 "--variant belongs to unipc and deis, not ddim" -- "$DFX" sample --model "$MODEL" --sampler ddim --variant tab --n 2 --out "$TMP/x.png"
expect 0 "deis on" -- "$DFX" sample --model "$MODEL" --sampler deis --order 3 --variant logrho --steps 8 --n 2 --out "$TMP/deis.png"
expect 2 "unknown --start 'middle' .fitted, path, paper." -- "$DFX" sample --start middle --n 2 --out "$TMP/x.png"
expect 2 "--path-start contradicts --start paper" -- "$DFX" sample --start paper --path-start --n 2 --out "$TMP/x.png"
expect 1 "--start paper is the Dale paper's log-normal start, for models on the dale path" -- "$DFX" sample --model "$MODEL" --start paper --n 2 --out "$TMP/x.png"
expect 1 "em diverged: the samples. RMS reached .*with --noise const it reaches .* Use --noise s" -- "$DFX" sample --model "$MODEL" --sampler em --noise const --grid uniform --allow-unstable --n 2 --out "$TMP/x.png"
expect 1 "pc needs --snr > 0" -- "$DFX" sample --sampler pc --snr 0 --n 2 --out "$TMP/x.png"
expect 1 "--start-langevin takes 0..1000 steps and --start-snr a number > 0" -- "$DFX" sample --start-langevin 1001 --n 2 --out "$TMP/x.png"
expect 1 "--start-langevin takes 0..1000 steps and --start-snr a number > 0" -- "$DFX" sample --start-langevin 3 --start-snr -1 --n 2 --out "$TMP/x.png"
expect 0 "233.0 evaluations/sample .200 Langevin steps at the start" -- "$DFX" sample --model "$SRC/models/mnist-dale.safetensors" --n 2 --out "$TMP/x.png"
expect 0 "33.0 evaluations/sample, " -- "$DFX" sample --model "$SRC/models/mnist-dale.safetensors" --start-langevin 0 --n 2 --out "$TMP/x.png"
for s in ddim dpmpp_2m ddpm euler_ancestral dpmpp_2m_sde pc; do
    expect 0 "$s on $AUTO" -- "$DFX" sample --sampler $s --steps 5 --n 2 --out "$TMP/x.png"
done

# the benchmark command runs and reports (no timing is checked)
expect 0 "batch +images/s +evals/s +ms/eval +GFLOP/s +%peak" -- "$DFX" bench --model "$UT" --batch 1,2 --steps 1 --repeat 1 --warmup 0 --peak 10 --profile --json "$TMP/b.json"
expect 0 "conv2d" -- "$DFX" bench --model "$UT" --batch 2 --steps 1 --repeat 1 --warmup 0 --peak 10 --profile
grep -q '"images_per_s"' "$TMP/b.json" && grep -q '"profile"' "$TMP/b.json" || { echo "FAIL: bench JSON lacks results"; fails=$((fails + 1)); }
expect 2 "--batch expects sizes like 1,8,64" -- "$DFX" bench --batch 1,x
expect 2 "need --steps >= 1" -- "$DFX" bench --repeat 0

# conservativity: errors, then a small run on the exact mixture (no timing,
# the numbers themselves are checked by test_conservativity)
expect 2 "unknown --field 'banana'" -- "$DFX" conservativity --field banana
expect 2 "unknown --method 'guess'" -- "$DFX" conservativity --method guess
expect 2 "--radii expects up to 8 numbers" -- "$DFX" conservativity --radii 0.1,x
expect 2 "--radii must be positive" -- "$DFX" conservativity --radii 0.1,-1
expect 2 "every metric is switched off" -- "$DFX" conservativity --probes 0 --patch 0 --loop-nodes 0
expect 2 "--t: 2 is outside" -- "$DFX" conservativity --model "$MODEL" --t 0.5,2 --quiet
expect 1 "no-such.safetensors" -- "$DFX" conservativity --model "$TMP/no-such.safetensors"
expect 1 "--data .*fewer than --points" -- "$DFX" conservativity --model "$MODEL" --data "$SRC/models/data/mnist10k-images-idx3-ubyte.gz" --points 20000 --quiet
expect 0 "asymmetry \+- se" -- "$DFX" conservativity --model "$MODEL" --baseline "$MODEL" --points 1 --t 0.5 --probes 2 --patch 2 --loop-nodes 8 --radii 0.1 --data "$SRC/models/data/mnist10k-images-idx3-ubyte.gz" --csv "$TMP/c.csv" --json "$TMP/c.json" --quiet
[ "$(wc -l <"$TMP/c.csv")" -eq 3 ] && grep -q '"asymmetry"' "$TMP/c.json" || { echo "FAIL: conservativity CSV/JSON"; fails=$((fails + 1)); }
# the native field by default, every field's ratio and the new columns
head -1 "$TMP/c.csv" | grep -q '^model,field,t,asym,asym_se,iso,iso_se,abs,abs_se,jnorm,dev,.*,asym_score,' &&
    sed -n 2p "$TMP/c.csv" | grep -q '^[^,]*,data,0.5,' &&
    grep -q '"asymmetry_isotropic_removed"' "$TMP/c.json" || { echo "FAIL: conservativity: fields and new columns"; fails=$((fails + 1)); }
expect 0 "field +score, exact" -- "$DFX" conservativity --model "$MODEL" --field score --points 2 --t 0.5 --probes 2 --patch 0 --loop-nodes 0 --data "$SRC/models/data/mnist10k-images-idx3-ubyte.gz" --quiet
expect 0 "one point: no standard errors" -- "$DFX" conservativity --model "$MODEL" --field native --points 1 --t 0.5 --probes 2 --patch 0 --loop-nodes 0 --data "$SRC/models/data/mnist10k-images-idx3-ubyte.gz" --quiet
printf 'model,t,asym,asym_se,jnorm,patch,patch_se\nm,0.5,1,1,1,1,1\n' >"$TMP/old.csv"
expect 1 "an older difflux .*measure again" -- "$DFX" conservativity --replot "$TMP/old.csv" --plot "$TMP/r.png"
expect 2 "--replot needs --plot" -- "$DFX" conservativity --replot "$TMP/c.csv"
expect 1 "not a conservativity CSV" -- "$DFX" conservativity --replot "$TMP/c.json" --plot "$TMP/r.png"
if "$DFX" conservativity --help >/dev/null && "$DFX" conservativity --model "$MODEL" --points 1 --t 0.5 --probes 2 --patch 0 --loop-nodes 0 --plot "$TMP/c.png" --quiet >/dev/null 2>"$TMP/plot.err"; then
    [ "$(head -c 4 "$TMP/c.png" | od -An -c | tr -d ' ')" = "211PNG" ] || { echo "FAIL: the plot is not a PNG"; fails=$((fails + 1)); }
    expect 0 "wrote .*r.png" -- "$DFX" conservativity --replot "$TMP/c.csv" --plot "$TMP/r.png"
    [ "$(head -c 4 "$TMP/r.png" | od -An -c | tr -d ' ')" = "211PNG" ] || { echo "FAIL: the replot is not a PNG"; fails=$((fails + 1)); }
else
    grep -q "no plotting" "$TMP/plot.err" || { echo "FAIL: --plot: $(cat "$TMP/plot.err")"; fails=$((fails + 1)); }
fi

if [ $fails -ne 0 ]; then
    echo "test_cli: $fails check(s) failed"
    exit 1
fi
echo "test_cli: all checks passed"
