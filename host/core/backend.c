/*
 * Backend selection: --device names a row of the table below, or NAME:N
 * (device N) for a numbered backend, or "auto".
 */
#include "core/backend.h"
#include "core/error.h"

#include <stdlib.h>
#include <string.h>

/* One backend. create: device -1 is the backend's default device; the CPU
 * backend takes threads (0 = all cores), the others ignore it. A backend
 * this build lacks keeps its row with create NULL, so that asking for it
 * says how to build it in. */
typedef struct backend_row {
    const char *name;       /* as --device names it */
    const char *label;      /* in messages: "this build of difflux has no CUDA backend" */
    int numbered;           /* --device NAME:N picks device N */
    int (*devices)(void);   /* devices present (0: none); NULL: always there */
    dfx_backend *(*create)(long device, int threads, dfx_error *err);
    const char *build_hint; /* how to build it in */
} backend_row;

static dfx_backend *cpu_create(long device, int threads, dfx_error *err)
{
    (void)device;
    return dfx_backend_cpu_create(threads, err);
}

#ifdef DFX_HAVE_CUDA
static dfx_backend *cuda_create(long device, int threads, dfx_error *err)
{
    (void)threads;
    if (device >= 0 && dfx_cuda_select(device, err)) return NULL;
    return dfx_backend_cuda_create(err);
}
#endif

/* From the plain-C reference (the first row, also taken for a NULL name) to
 * the most preferred: "auto" takes the last one built in with a device. */
static const backend_row backends[] = {
    {.name = "cpu", .label = "CPU", .create = cpu_create},
    {.name = "cuda",
     .label = "CUDA",
     .numbered = 1,
#ifdef DFX_HAVE_CUDA
     .devices = dfx_cuda_device_count,
     .create = cuda_create,
#endif
     .build_hint = "configure with -DDIFFLUX_CUDA=ON on a machine with the CUDA toolkit"},
};
#define N_BACKENDS ((int)(sizeof backends / sizeof backends[0]))

static const backend_row *find_backend(const char *name)
{
    for (int i = 0; i < N_BACKENDS; i++)
        if (strcmp(name, backends[i].name) == 0) return &backends[i];
    return NULL;
}

/* The numbered backend that name is NAME:N of, or NULL. */
static const backend_row *find_numbered(const char *name)
{
    for (int i = 0; i < N_BACKENDS; i++) {
        size_t len = strlen(backends[i].name);
        if (backends[i].numbered && strncmp(name, backends[i].name, len) == 0 &&
            name[len] == ':')
            return &backends[i];
    }
    return NULL;
}

/* Built in, and with a device (or needing none). */
static int available(const backend_row *b)
{
    return b->create && (!b->devices || b->devices() > 0);
}

int dfx_cuda_devices(void)
{
    const backend_row *b = find_backend("cuda");
    return b->devices ? b->devices() : 0;
}

int dfx_have_cuda(void)
{
    return find_backend("cuda")->create != NULL;
}

dfx_backend *dfx_backend_create(const char *name, int threads, dfx_error *err)
{
    if (!name) return backends[0].create(-1, threads, err);
    if (strcmp(name, "auto") == 0) {
        int i = N_BACKENDS - 1;
        while (i > 0 && !available(&backends[i])) i--;
        return backends[i].create(-1, threads, err);
    }
    const backend_row *b = find_backend(name);
    long device = -1;
    if (!b && (b = find_numbered(name))) {
        const char *num = name + strlen(b->name) + 1;
        char *end;
        device = strtol(num, &end, 10);
        if (!*num || *end || device < 0 || device > 1023) {
            dfx_fail(err, "--device %s: expected %s:N with N a device number", name, b->name);
            return NULL;
        }
    }
    if (!b) {
        char list[256] = "";
        for (int i = 0; i < N_BACKENDS; i++) {
            strncat(list, backends[i].name, sizeof list - strlen(list) - 1);
            strncat(list, i + 1 < N_BACKENDS ? ", " : " or auto", sizeof list - strlen(list) - 1);
        }
        dfx_fail(err, "unknown device '%s' (expected %s)", name, list);
        return NULL;
    }
    if (!b->create) {
        /* the hint goes with the plain name only */
        if (device < 0)
            dfx_fail(err, "--device %s: this build of difflux has no %s backend (%s)", name,
                     b->label, b->build_hint);
        else
            dfx_fail(err, "--device %s: this build of difflux has no %s backend", name, b->label);
        return NULL;
    }
    return b->create(device, threads, err);
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
