/* Backend selection: cpu, cuda, or auto (CUDA when built in and a GPU is present). */
#include "backend.h"
#include "error.h"

#include <string.h>

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
