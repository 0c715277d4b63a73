#!/usr/bin/env bash
# Builds tests/bench/conv_libs.c against build/libdifflux.a and oneDNN into
# build/bench_conv_libs, then runs it with this script's arguments:
#
#   tests/bench/conv_libs.sh [--batch 1,64] [--threads 2] [--min-time 0.3] [--isa]
#
# BUILD=dir picks another CMake build folder (default: build). The library
# is not rebuilt here; build it first with cmake --build build.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
build=${BUILD:-$root/build}
lib=$build/libdifflux.a
out=$build/bench_conv_libs

if [[ ! -f $lib ]]; then
    echo "conv_libs.sh: $lib not found; build the library first (cmake --build $build)" >&2
    exit 1
fi
have_dnnl=0
if [[ -f /usr/include/oneapi/dnnl/dnnl.h || -f /usr/include/dnnl.h ]]; then
    for so in /usr/lib/*/libdnnl.so /usr/lib/libdnnl.so /usr/local/lib/libdnnl.so; do
        [[ -e $so ]] && have_dnnl=1
    done
fi
if [[ $have_dnnl == 0 ]]; then
    cat >&2 <<'EOF'
conv_libs.sh: oneDNN is not installed (dnnl.h / libdnnl.so not found).
  Install it with:   apt-get install -y libdnnl-dev      (Debian/Ubuntu; oneDNN 2.x)
  (as root; run apt-get update first if the package is not found)
EOF
    exit 1
fi

# What libdifflux.a needs: take the link line CMake wrote for a test program
# (it knows whether the library was built with PLplot, CUDA, ...); otherwise
# guess from the archive's undefined symbols.
rsp=$build/tests/CMakeFiles/test_conv.dir/linkLibs.rsp
libs=()
if [[ -f $rsp ]]; then
    for a in $(cat "$rsp"); do
        a=${a//\"/}
        case $a in
        *libdifflux.a) ;;                 # ours, given explicitly below
        -Wl,*) libs+=("$a") ;;
        /*|-l*|-L*) libs+=("$a") ;;
        esac
    done
    # CMake links with the CUDA stubs folders on its command line
    libs+=(-L/usr/local/cuda/targets/x86_64-linux/lib -L/usr/local/cuda/lib)
else
    undef=$(nm -u "$lib" 2>/dev/null | awk '{print $2}' | sort -u)
    libs+=(-lcjson -lz)
    if [[ -d /usr/lib/x86_64-linux-gnu/openblas-pthread ]]; then
        libs+=(-L/usr/lib/x86_64-linux-gnu/openblas-pthread
               -Wl,-rpath,/usr/lib/x86_64-linux-gnu/openblas-pthread)
    fi
    libs+=(-lopenblas)
    grep -q '^pl' <<<"$undef" && libs+=(-lplplot)
    grep -q '^stbi' <<<"$undef" && libs+=(-lstb)
    if grep -q '^cuda\|^cublas' <<<"$undef"; then
        libs+=(-L/usr/local/cuda/lib64 -L/usr/local/cuda/lib -lcublas -lcublasLt -lcudart)
    fi
    libs+=(-lpthread -ldl -lrt)
fi

cc=${CC:-cc}
cflags=(-O2 -std=c11 -Wall -Wextra -fopenmp -I"$root/host")
[[ -d /usr/include/oneapi/dnnl ]] && cflags+=(-isystem /usr/include/oneapi/dnnl)
# the archive holds the CUDA backend's object (C++): link the C++ runtime too
"$cc" "${cflags[@]}" -o "$out" "$here/conv_libs.c" "$lib" -ldnnl "${libs[@]}" -lstdc++ -lm
exec "$out" "$@"
