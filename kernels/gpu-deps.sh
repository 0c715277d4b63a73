#!/usr/bin/env bash
# What a build of difflux with CUDA needs, checked, and what a machine
# without network access lacks, carried (kernels/README.md, "The GPU
# machine"). Three uses:
#
#   kernels/gpu-deps.sh fetch   # here, where apt-get works: prepare the carry
#                               # folder ./.deps (ignored by git, ~10 MB)
#   kernels/gpu-deps.sh check   # anywhere: each tool and library, found or
#                               # missing; exit 1 if one that is required
#                               # is missing and .deps cannot stand in
#   source kernels/gpu-deps.sh; dfx_deps_setup
#                               # (gpu-check.sh) check, unpack the carried
#                               # parts that are missing into /tmp/dfx-deps,
#                               # export the paths, check again
#
# Required tools: a C compiler, nvcc (with its host C++ compiler), cmake >=
# 3.22, make or ninja, pkg-config, tar with gzip, timeout. Libraries: stb,
# cJSON, OpenBLAS (pkg-config modules stb, libcjson, openblas) and zlib.
# Optional: python3 (the PyTorch comparison of the bench part), readelf and
# cuobjdump (reports). The carry folder holds, as one archive of a sysroot
# (.deps/sysroot.tar.gz, Debian bookworm packages, static libraries and
# documentation left out): the libraries and their headers, pkgconf, make.
# It cannot hold a compiler or the CUDA toolkit (a compiler's packages alone
# are ~40 MB, and the device tool carries 64 MiB, the working tree
# included): those must be on the machine; the image of the GPU machine has
# nvcc, g++/gcc, cmake and ninja (its description, and nvcc was seen
# building there). A missing cmake could be carried as the PyPI wheel
# `cmake` (~25 MB) where the tree leaves room: see kernels/README.md.

DFX_DEPS_PACKAGES="libstb-dev libstb0 libcjson-dev libcjson1 libopenblas-dev libopenblas0
    libopenblas0-pthread libopenblas-pthread-dev libgfortran5 libquadmath0 zlib1g-dev zlib1g
    pkgconf pkgconf-bin libpkgconf3 make"
DFX_DEPS_ROOT=${DFX_DEPS_ROOT:-/tmp/dfx-deps}
DFX_CMAKE_MIN=3.22

# The repository root (this file is in kernels/).
dfx_deps_repo() { (cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd); }

# "a.b.c" >= "x.y.z"?
dfx_version_ge() { [ "$(printf '%s\n%s\n' "$2" "$1" | sort -V | head -1)" = "$2" ]; }

# The first C compiler found: $CC, cc, gcc, gcc-N (newest), clang.
dfx_find_cc() {
    local c
    if [ -n "${CC:-}" ] && command -v "$CC" >/dev/null 2>&1; then echo "$CC"; return 0; fi
    for c in cc gcc $(compgen -c gcc- 2>/dev/null | grep -E '^gcc-[0-9]+$' | sort -t- -k2 -rn) clang; do
        if command -v "$c" >/dev/null 2>&1; then echo "$c"; return 0; fi
    done
    return 1
}

# nvcc: on PATH, or the toolkit's usual places.
dfx_find_nvcc() {
    local n
    for n in "$(command -v nvcc 2>/dev/null)" /usr/local/cuda/bin/nvcc /usr/local/cuda-*/bin/nvcc; do
        if [ -n "$n" ] && [ -x "$n" ]; then echo "$n"; return 0; fi
    done
    return 1
}

# One line per tool and library: "ok|MISSING|optional NAME detail". Sets
# DFX_DEPS_MISSING (required ones missing) and DFX_DEPS_NEED_CARRY (missing
# ones the carry folder provides: pkg-config, make, libraries).
dfx_deps_check() {
    local v cc nvcc pc
    DFX_DEPS_MISSING=""
    DFX_DEPS_NEED_CARRY=""
    report() { printf '%-8s %-12s %s\n' "$1" "$2" "$3"; }
    if cc=$(dfx_find_cc); then
        report ok cc "$(command -v "$cc") ($("$cc" --version 2>/dev/null | head -1))"
    else
        report MISSING cc "no C compiler (cc, gcc, gcc-N, clang): cannot be carried"
        DFX_DEPS_MISSING+=" cc"
    fi
    if nvcc=$(dfx_find_nvcc); then
        report ok nvcc "$nvcc ($("$nvcc" --version 2>/dev/null | grep -o 'release [0-9.]*'))"
        if ! command -v g++ >/dev/null 2>&1 && ! command -v c++ >/dev/null 2>&1; then
            report MISSING c++ "nvcc needs a host C++ compiler (g++): cannot be carried"
            DFX_DEPS_MISSING+=" c++"
        fi
    else
        report MISSING nvcc "no CUDA toolkit (nvcc on PATH or /usr/local/cuda*/bin)"
        DFX_DEPS_MISSING+=" nvcc"
    fi
    if command -v cmake >/dev/null 2>&1; then
        v=$(cmake --version | head -1 | grep -o '[0-9][0-9.]*' | head -1)
        if dfx_version_ge "$v" "$DFX_CMAKE_MIN"; then
            report ok cmake "$(command -v cmake) ($v)"
        else
            report MISSING cmake "$(command -v cmake) is $v, need >= $DFX_CMAKE_MIN"
            DFX_DEPS_MISSING+=" cmake"
        fi
    else
        report MISSING cmake "need >= $DFX_CMAKE_MIN (not in the carry folder: kernels/README.md)"
        DFX_DEPS_MISSING+=" cmake"
    fi
    if command -v ninja >/dev/null 2>&1; then
        report ok ninja "$(command -v ninja) ($(ninja --version))"
    elif command -v make >/dev/null 2>&1; then
        report ok make "$(command -v make)"
    else
        report MISSING make "no make or ninja (carried: make)"
        DFX_DEPS_NEED_CARRY+=" make"
    fi
    pc=$(command -v pkg-config 2>/dev/null || command -v pkgconf 2>/dev/null)
    if [ -n "$pc" ]; then
        report ok pkg-config "$pc"
        for m in stb libcjson openblas zlib; do
            if "$pc" --exists "$m" 2>/dev/null; then
                report ok "$m" "$("$pc" --modversion "$m" 2>/dev/null)"
            else
                report MISSING "$m" "pkg-config module (carried)"
                DFX_DEPS_NEED_CARRY+=" $m"
            fi
        done
    else
        report MISSING pkg-config "(carried: pkgconf); the libraries cannot be checked without it"
        DFX_DEPS_NEED_CARRY+=" pkg-config libs"
    fi
    for t in tar gzip timeout; do
        if command -v $t >/dev/null 2>&1; then report ok $t "$(command -v $t)"; else
            report MISSING $t "required"
            DFX_DEPS_MISSING+=" $t"
        fi
    done
    for t in python3 readelf cuobjdump nvidia-smi; do
        if command -v $t >/dev/null 2>&1; then report ok $t "$(command -v $t)"; else
            report optional $t "not found (the steps that use it say so)"
        fi
    done
    local carry
    carry="$(dfx_deps_repo)/.deps/sysroot.tar.gz"
    if [ -n "$DFX_DEPS_NEED_CARRY" ]; then
        if [ -f "$carry" ]; then
            report carry sysroot "$carry provides:$DFX_DEPS_NEED_CARRY"
        else
            report MISSING sysroot "missing:$DFX_DEPS_NEED_CARRY, and no $carry (kernels/gpu-deps.sh fetch, then carry .deps)"
            DFX_DEPS_MISSING+="$DFX_DEPS_NEED_CARRY"
        fi
    fi
    unset -f report
    [ -z "$DFX_DEPS_MISSING" ]
}

# Unpacks the carried sysroot and points the build at it: its pkg-config
# and make on PATH, pkg-config and CMake searching it alone, its shared
# libraries on LD_LIBRARY_PATH (OpenBLAS's libgfortran among them).
dfx_deps_use_carry() {
    local R=$DFX_DEPS_ROOT A L
    A="$(dfx_deps_repo)/.deps/sysroot.tar.gz"
    mkdir -p "$R" && tar -xzf "$A" -C "$R" || return 1
    L=$R/usr/lib/x86_64-linux-gnu
    export PATH=$PATH:$R/usr/bin # the machine's own tools first
    export PKG_CONFIG_SYSROOT_DIR=$R
    export PKG_CONFIG_LIBDIR=$L/pkgconfig:$R/usr/share/pkgconfig:$L/openblas-pthread/pkgconfig
    export CMAKE_PREFIX_PATH=$R/usr${CMAKE_PREFIX_PATH:+:$CMAKE_PREFIX_PATH}
    export LD_LIBRARY_PATH=$L:$L/openblas-pthread:$R/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
    if ! command -v pkg-config >/dev/null 2>&1; then
        ln -sf pkgconf "$R/usr/bin/pkg-config" 2>/dev/null
    fi
    echo "carried sysroot unpacked into $R ($(head -1 "$(dfx_deps_repo)/.deps/MANIFEST" 2>/dev/null))"
}

# For gpu-check.sh: check; if the carry folder can supply what is missing,
# unpack it and check again. Returns 1 when something required is missing.
dfx_deps_setup() {
    local nv rc
    if nv=$(dfx_find_nvcc); then
        PATH=$(dirname "$nv"):$PATH
        export PATH
    fi
    if [ -z "${CC:-}" ] && ! command -v cc >/dev/null 2>&1 && CC=$(dfx_find_cc); then export CC; fi
    dfx_deps_check
    rc=$?
    if [ -z "$DFX_DEPS_NEED_CARRY" ] || [ ! -f "$(dfx_deps_repo)/.deps/sysroot.tar.gz" ]; then
        return $rc
    fi
    dfx_deps_use_carry || { echo "could not unpack the carried sysroot"; return 1; }
    echo "-- after unpacking the carried sysroot:"
    dfx_deps_check
}

# Here, with apt: the packages' .deb files into a scratch folder, unpacked
# into one sysroot without static libraries and documentation, packed as
# .deps/sysroot.tar.gz with a MANIFEST (package versions).
dfx_deps_fetch() {
    local repo tmp root L
    repo=$(dfx_deps_repo)
    command -v apt-get >/dev/null || { echo "gpu-deps.sh fetch: needs apt-get (Debian/Ubuntu)"; return 1; }
    tmp=$(mktemp -d)
    root=$tmp/root
    mkdir -p "$tmp/debs" "$root"
    # shellcheck disable=SC2086 # the list splits into package names
    (cd "$tmp/debs" && apt-get download $DFX_DEPS_PACKAGES) || { rm -rf "$tmp"; return 1; }
    for f in "$tmp"/debs/*.deb; do dpkg-deb -x "$f" "$root" || { rm -rf "$tmp"; return 1; }; done
    L=$root/usr/lib/x86_64-linux-gnu
    find "$root" -name '*.a' -delete
    rm -rf "$root/usr/share/doc" "$root/usr/share/man" "$root/usr/share/info" \
        "$root/usr/share/lintian" "$root/usr/share/locale"
    # the reference BLAS/LAPACK interfaces beside OpenBLAS: difflux links
    # libopenblas itself (which holds LAPACK too)
    rm -f "$L"/openblas-pthread/lib{blas,lapack}.so* "$L"/openblas-pthread/pkgconfig/{blas,lapack}-openblas.pc
    # what Debian's alternatives would link: libopenblas.so.0 in the main
    # library directory (the binaries' RUNPATH names openblas-pthread too)
    ln -sf openblas-pthread/libopenblas.so.0 "$L/libopenblas.so.0"
    # absolute links (libz.so -> /lib/...) made relative, inside the sysroot
    find "$root" -type l -lname '/*' | while read -r l; do
        ln -sfr "$root$(readlink "$l")" "$l"
    done
    mkdir -p "$repo/.deps"
    rm -f "$repo"/.deps/*.deb # an older layout carried the .deb files themselves
    {
        echo "Debian $(cat /etc/debian_version 2>/dev/null) packages, $(date -u +%F): $DFX_DEPS_PACKAGES" | tr -s ' \n' ' '
        echo
        for f in "$tmp"/debs/*.deb; do dpkg-deb -f "$f" Package Version | paste -sd' '; done
    } >"$repo/.deps/MANIFEST"
    tar -cf - -C "$root" . | gzip -9 >"$repo/.deps/sysroot.tar.gz" || { rm -rf "$tmp"; return 1; }
    rm -rf "$tmp"
    echo "wrote $repo/.deps/sysroot.tar.gz ($(du -h "$repo/.deps/sysroot.tar.gz" | cut -f1)); name .deps in the device tool's carry"
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    set -uo pipefail
    case "${1:-fetch}" in
    fetch) dfx_deps_fetch ;;
    check)
        if nv=$(dfx_find_nvcc); then PATH=$(dirname "$nv"):$PATH; fi
        dfx_deps_check
        rc=$?
        [ $rc -ne 0 ] && echo "missing:$DFX_DEPS_MISSING"
        exit $rc
        ;;
    -h | --help) sed -n '2,30p' "$0" ;;
    *) echo "usage: kernels/gpu-deps.sh fetch|check" >&2; exit 2 ;;
    esac
fi
