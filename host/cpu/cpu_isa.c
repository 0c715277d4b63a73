/* The CPU backend's instruction-set path: the one place where it is chosen
 * (cpu_isa.h). */
#include "cpu/cpu_isa.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

extern const dfx_cpu_kernels dfx_cpu_kernels_baseline;
#ifdef DFX_ISA_X86_KERNELS /* CMakeLists.txt: x86-64 with GCC or Clang */
extern const dfx_cpu_kernels dfx_cpu_kernels_avx2, dfx_cpu_kernels_avx512;
#endif

static const char *const NAMES[DFX_ISA_COUNT] = {"baseline", "avx2", "avx512"};

const char *dfx_isa_name(dfx_isa isa)
{
    return isa >= 0 && isa < DFX_ISA_COUNT ? NAMES[isa] : "?";
}

static const dfx_cpu_kernels *kernels_of(dfx_isa isa)
{
    switch (isa) {
#ifdef DFX_ISA_X86_KERNELS
    case DFX_ISA_AVX512: return &dfx_cpu_kernels_avx512;
    case DFX_ISA_AVX2: return &dfx_cpu_kernels_avx2;
#endif
    case DFX_ISA_BASELINE: return &dfx_cpu_kernels_baseline;
    default: return NULL;
    }
}

/* By feature, never by model: __builtin_cpu_supports also checks that the
 * OS saves the wider registers (XCR0). */
int dfx_isa_supported(dfx_isa isa)
{
    if (!kernels_of(isa)) return 0;
#ifdef DFX_ISA_X86_KERNELS
    __builtin_cpu_init();
#ifdef DFX_EMULATE_AVX512 /* test build: the avx512 tiling in AVX2 instructions */
    if (isa == DFX_ISA_AVX512) isa = DFX_ISA_AVX2;
#endif
    if (isa == DFX_ISA_AVX512) return __builtin_cpu_supports("avx512f");
    if (isa == DFX_ISA_AVX2) return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#endif
    return isa == DFX_ISA_BASELINE;
}

dfx_isa dfx_isa_best(void)
{
    for (int i = DFX_ISA_COUNT - 1; i > 0; i--)
        if (dfx_isa_supported((dfx_isa)i)) return (dfx_isa)i;
    return DFX_ISA_BASELINE;
}

static char isa_error[200];

/* Read once: the path is fixed for the life of the process, so every
 * result of one run comes from the same kernels. */
static dfx_isa choose(void)
{
    const dfx_isa best = dfx_isa_best();
    const char *env = getenv("DIFFLUX_ISA");
    if (!env || !*env || strcmp(env, "auto") == 0) return best;
    for (int i = 0; i < DFX_ISA_COUNT; i++)
        if (strcmp(env, NAMES[i]) == 0) {
            if (dfx_isa_supported((dfx_isa)i)) return (dfx_isa)i;
            snprintf(isa_error, sizeof isa_error,
                     "DIFFLUX_ISA=%s: this CPU (or this build) cannot run the %s path; "
                     "it supports up to '%s' (unset DIFFLUX_ISA to use it)",
                     env, env, NAMES[best]);
            return best;
        }
    snprintf(isa_error, sizeof isa_error,
             "DIFFLUX_ISA=%.40s: unknown path (use baseline, avx2, avx512 or auto)", env);
    return best;
}

static dfx_isa chosen;
static const dfx_cpu_kernels *chosen_kernels;
static pthread_once_t once = PTHREAD_ONCE_INIT;

static void init(void)
{
    chosen = choose();
    chosen_kernels = kernels_of(chosen);
}

dfx_isa dfx_cpu_isa(void)
{
    pthread_once(&once, init);
    return chosen;
}

const dfx_cpu_kernels *dfx_cpu_kernels_get(void)
{
    pthread_once(&once, init);
    return chosen_kernels;
}

const char *dfx_cpu_isa_error(void)
{
    dfx_cpu_isa();
    return isa_error[0] ? isa_error : NULL;
}
