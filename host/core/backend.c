/* Backend selection: cpu, cuda, or auto (CUDA when built in and a GPU is present). */
#include "core/backend.h"
#include "core/error.h"

#include <stdlib.h>
#include <string.h>

int dfx_cuda_devices(void)
{
#ifdef DFX_HAVE_CUDA
    return dfx_cuda_device_count();
#else
    return 0;
#endif
}

int dfx_have_cuda(void)
{
#ifdef DFX_HAVE_CUDA
    return 1;
#else
    return 0;
#endif
}

dfx_backend *dfx_backend_create(const char *name, int threads, dfx_error *err)
{
    if (!name || strcmp(name, "cpu") == 0) return dfx_backend_cpu_create(threads, err);
    if (strcmp(name, "cuda") == 0) {
#ifdef DFX_HAVE_CUDA
        return dfx_backend_cuda_create(err);
#else
        dfx_fail(err, "--device cuda: this build of difflux has no CUDA backend "
                      "(configure with -DDIFFLUX_CUDA=ON on a machine with the CUDA toolkit)");
        return NULL;
#endif
    }
    if (strncmp(name, "cuda:", 5) == 0) {
        char *end;
        long idx = strtol(name + 5, &end, 10);
        if (!name[5] || *end || idx < 0 || idx > 1023) {
            dfx_fail(err, "--device %s: expected cuda:N with N a device number", name);
            return NULL;
        }
#ifdef DFX_HAVE_CUDA
        if (dfx_cuda_select(idx, err)) return NULL;
        return dfx_backend_cuda_create(err);
#else
        dfx_fail(err, "--device %s: this build of difflux has no CUDA backend", name);
        return NULL;
#endif
    }
    if (strcmp(name, "auto") == 0) {
#ifdef DFX_HAVE_CUDA
        if (dfx_cuda_device_count() > 0) return dfx_backend_cuda_create(err);
#endif
        return dfx_backend_cpu_create(threads, err);
    }
    dfx_fail(err, "unknown device '%s' (expected cpu, cuda or auto)", name);
    return NULL;
}

void dfx_backend_destroy(dfx_backend *be)
{
    if (be) be->ops->destroy(be);
}

const char *dfx_backend_name(const dfx_backend *be)
{
    return be ? be->name : "none";
}

const char *dfx_backend_device(const dfx_backend *be)
{
    return be && be->device[0] ? be->device : "unknown";
}

double dfx_backend_peak_gflops(dfx_backend *be)
{
    return be->ops->peak_gflops ? be->ops->peak_gflops(be) : 0.0;
}

void *dfx_be_alloc(dfx_backend *be, size_t bytes, const char *what, dfx_error *err)
{
    void *p = be->ops->alloc(be, bytes);
    if (!p) dfx_fail(err, "%s: out of %s memory (%zu bytes)", what, be->name, bytes);
    return p;
}

static const char *const precision_names[] = {"fp32", "tf32", "bf16"};

int dfx_backend_set_precision(dfx_backend *be, const char *mode, dfx_error *err)
{
    int m = -1;
    for (int i = 0; i < 3; i++)
        if (mode && strcmp(mode, precision_names[i]) == 0) m = i;
    if (m < 0)
        return dfx_fail(err, "unknown precision '%s' (expected fp32, tf32 or bf16)",
                        mode ? mode : "");
    if (m == be->precision) return 0;
    if (!be->ops->set_precision)
        return dfx_fail(err, "--precision %s: the %s backend computes in fp32 only", mode,
                        be->name);
    if (be->ops->set_precision(be, m, err)) return -1;
    be->precision = m;
    return 0;
}

const char *dfx_backend_precision(const dfx_backend *be)
{
    return be && be->precision >= 0 && be->precision < 3 ? precision_names[be->precision]
                                                           : "fp32";
}
