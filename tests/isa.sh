#!/usr/bin/env bash
# tests/isa.sh ISA DIFFLUX TEST [ARGS]: runs TEST on the CPU instruction-set
# path ISA (DIFFLUX_ISA), or skips it (exit 77) where this CPU lacks the path.
isa=$1 difflux=$2
shift 2
if ! DIFFLUX_ISA=$isa "$difflux" --version >/dev/null 2>&1; then
    echo "skipped: this CPU has no $isa path ($(DIFFLUX_ISA=$isa "$difflux" --version 2>&1 | tail -1))"
    exit 77
fi
DIFFLUX_ISA=$isa exec "$@"
