/*
 * Backend parity test, in the manner of ggml's test-backend-ops: every
 * operation of the backend table runs on the CPU backend (the reference,
 * host/cpu/backend_cpu.c, host/cpu/nn_cpu.c) and on each device backend
 * (CUDA: kernels/backend_cuda.cu) with the same random inputs, and the
 * results are compared by the normalised error ||got - ref|| / ||ref||.
 * The cases are the table of tests/backend_ops/cases.c, one op family and
 * shape a row; the families (tests/backend_ops/cases_*.c) build inputs and
 * run one backend, this runner does the rest for all of them: both runs,
 * the comparison, the batch check (a sample alone against the same sample
 * in a batch, on the backend under test), timing. Besides the ops: whole
 * U-Nets (tests/fixtures) with their exact Jacobian-vector products,
 * samplers and classifiers end to end, the reduced precisions, error paths
 * and CUDA graphs (recorded lincombs; the U-Net, which must give bit for
 * bit what it gives op by op, DIFFLUX_CUDA_GRAPHS=0).
 *
 * --cpu runs the same cases with the CPU backend on both sides: this
 * process on its instruction-set path (DIFFLUX_ISA, host/cpu/cpu_isa.h;
 * the best one by default) under test, a child on the baseline path (the
 * path is chosen once per process) as the reference.
 *
 * Exit status: 0 all passed, 1 a comparison failed, 77 skipped (no CUDA in
 * this build, or no device).
 */
#define _POSIX_C_SOURCE 200809L /* setenv, fdopen, clock_gettime */
#include "backend_ops/bo.h"
#include "cpu/cpu_isa.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define SKIP 77
#define PERF_REPS 10

test_rng bo_rng;
dfx_error bo_err;
static int failures;

/* ------------------------------------------------------------- helpers */

void *bo_xmalloc(size_t bytes)
{
    void *p = malloc(bytes ? bytes : 1);
    if (!p) {
        fprintf(stderr, "test_backend_ops: out of host memory (%zu bytes)\n", bytes);
        exit(1);
    }
    return p;
}

/* Blocks of a case's host memory, chained from bo_data.mem. */
typedef union host_block {
    union host_block *next;
    max_align_t align;
} host_block;

void *bo_host(bo_data *d, size_t bytes)
{
    host_block *b = bo_xmalloc(sizeof *b + bytes);
    b->next = d->mem;
    d->mem = b;
    return b + 1;
}

static void host_free_all(bo_data *d)
{
    for (host_block *b = d->mem, *next; b; b = next) {
        next = b->next;
        free(b);
    }
    d->mem = NULL;
}

void bo_die(const char *what, const dfx_backend *be)
{
    fprintf(stderr, "test_backend_ops: %s on %s: %s\n", what, be->name, bo_err.msg);
    exit(1);
}

void *bo_dev_alloc(dfx_backend *be, size_t bytes)
{
    void *p = dfx_be_alloc(be, bytes, "test buffer", &bo_err);
    if (!p) bo_die("alloc", be);
    return p;
}

float *bo_up(dfx_backend *be, const float *h, size_t n)
{
    void *p = bo_dev_alloc(be, n * sizeof(float));
    if (be->ops->upload(be, p, h, n * sizeof(float), &bo_err)) bo_die("upload", be);
    return p;
}

float *bo_junk(dfx_backend *be, size_t n)
{
    float *h = bo_xmalloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++) h[i] = 777.0f;
    float *d = bo_up(be, h, n);
    free(h);
    return d;
}

void bo_down(dfx_backend *be, float *h, const float *d, size_t n)
{
    if (be->ops->sync(be, &bo_err)) bo_die("sync", be);
    if (be->ops->download(be, h, d, n * sizeof(float), &bo_err)) bo_die("download", be);
}

void bo_free(dfx_backend *be, const void *p)
{
    if (p) be->ops->free(be, (void *)p);
}

void bo_free_list(dfx_backend *be, const void *const *p, size_t n)
{
    for (size_t i = 0; i < n; i++) bo_free(be, p[i]);
}

size_t bo_bits_differ(const float *a, const float *b, size_t n)
{
    size_t c = 0;
    for (size_t i = 0; i < n; i++) c += memcmp(&a[i], &b[i], sizeof(float)) != 0;
    return c;
}

void bo_row(const char *name, double e, double tol, const char *note)
{
    int ok = e <= tol;
    if (!ok) failures++;
    printf("%-58s %11.3e %9.0e  %s%s%s\n", name, e, tol, ok ? "ok" : "FAIL",
           note && *note ? "  " : "", note ? note : "");
}

void bo_compare(const char *name, const float *got, const float *ref, size_t n, double tol,
                const char *extra)
{
    if (tol == BO_BITS) {
        bo_compare_bits(name, got, ref, n);
        return;
    }
    char note[160];
    size_t nb = bo_bits_differ(got, ref, n);
    snprintf(note, sizeof note, "%s%s%zu of %zu differ in bits", extra ? extra : "",
             extra && *extra ? "; " : "", nb, n);
    bo_row(name, nerr(got, ref, n), tol, note);
}

void bo_compare_bits(const char *name, const float *got, const float *ref, size_t n)
{
    char note[96];
    size_t nb = bo_bits_differ(got, ref, n);
    double e = nerr(got, ref, n);
    if (nb && !(e > 0.0) && !isnan(e)) e = 1e-300;
    snprintf(note, sizeof note, "%zu of %zu differ in bits", nb, n);
    bo_row(name, nb ? e : 0.0, 0.0, note);
}

dfx_model *bo_load(const char *file, dfx_backend *be)
{
    char path[600];
    snprintf(path, sizeof path, "%s/%s", DFX_TEST_DATA, file);
    dfx_model *m = dfx_model_load(path, be, &bo_err);
    if (!m) bo_die("dfx_model_load", be);
    return m;
}

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec * 1e-6;
}

int bo_time_next(bo_run *r)
{
    if (r->reps == 0) return r->iter++ == 0;
    if (r->iter == 1 || r->iter == r->reps + 1) /* after the warm-up call; at the end */
        if (r->be->ops->sync(r->be, &bo_err)) bo_die("sync", r->be);
    if (r->iter == 1) r->t0 = now_ms();
    if (r->iter == r->reps + 1) {
        r->ms += (now_ms() - r->t0) / r->reps;
        return 0;
    }
    r->iter++;
    return 1;
}

/* -------------------------------------------------------------- runner */

typedef enum { CHECK, DUMP, PERF, LIST } pass_mode;

/* -o: the ops to run (none: all) */
static const char *only[64];
static int nonly;

static int selected(const bo_case *c)
{
    const char *op = c->op ? c->op : c->f->name;
    for (int i = 0; i < nonly; i++)
        if (strcmp(only[i], op) == 0) return 1;
    return nonly == 0;
}

static float *run_case(dfx_backend *be, const bo_case *c, const bo_data *d, int b0, int B,
                       int reps, double *ms)
{
    bo_run r = {be, reps, 0, 0.0, 0.0};
    size_t n = b0 == 0 && B == d->B ? d->n : (size_t)B * d->per;
    float *out = bo_xmalloc(n * sizeof(float));
    c->f->run(&r, c, d, b0, B, out);
    if (ms) *ms = r.ms;
    return out;
}

/* The reference's outputs of a case, written by a child's DUMP pass. */
static float *read_ref(FILE *in, const bo_data *d)
{
    size_t n = 0;
    float *v = bo_xmalloc(d->n * sizeof(float));
    if (fread(&n, sizeof n, 1, in) != 1 || n != d->n || fread(v, sizeof(float), n, in) != n) {
        fprintf(stderr, "test_backend_ops: the reference pass ended early or ran another case "
                        "(at %s)\n", d->name);
        exit(1);
    }
    return v;
}

/* A sample alone (or the samples from d->alone on as a batch of their own,
 * or each sample alone) against the same samples in the batch, on the
 * backend under test. */
static void batch_check(const bo_pair *p, const bo_case *c, const bo_data *d, const float *got)
{
    char title[160], note[64];
    const float *batch = got + d->batch_off;
    if (d->each) {
        double worst = 0.0;
        size_t nbits = 0;
        for (int s = 0; s < d->B; s++) {
            float *one = run_case(p->test, c, d, s, 1, 0, NULL);
            double e = nerr(one, batch + (size_t)s * d->per, d->per);
            if (!(e <= worst)) worst = e;
            nbits += bo_bits_differ(one, batch + (size_t)s * d->per, d->per);
            free(one);
        }
        snprintf(title, sizeof title, "  each of the %d samples alone vs in the batch (%s)",
                 d->B, p->test_name);
        snprintf(note, sizeof note, "%zu values differ in bits", nbits);
        bo_row(title, worst, c->batch_tol, note);
        return;
    }
    const int k = d->alone, m = d->B - k;
    float *sub = run_case(p->test, c, d, k, m, 0, NULL);
    if (m == 1)
        snprintf(title, sizeof title, "  last sample alone vs in the batch (%s)", p->test_name);
    else
        snprintf(title, sizeof title, "  samples %d..%d as their own batch (%s)", k, d->B - 1,
                 p->test_name);
    bo_compare(title, sub, batch + (size_t)k * d->per, (size_t)m * d->per, c->batch_tol, NULL);
    free(sub);
}

static void perf_row(const bo_case *c, const bo_data *d, dfx_backend *be, double ms)
{
    char rate[32] = "-";
    if (d->flops > 0 && ms > 0) snprintf(rate, sizeof rate, "%.1f", d->flops / (ms * 1e6));
    printf("%-16s %-58s %-6s %10.3f %10s\n", c->op ? c->op : c->f->name, d->name, be->name, ms,
           rate);
}

/* One pass over the selected cases: CHECK compares p->test with p->ref
 * (or, p->ref NULL, with the outputs a child's DUMP pass writes to ref_in);
 * DUMP writes p->cpu's outputs to stdout; PERF times each case on each of
 * the backends `perf`; LIST prints the cases. */
static void pass(const bo_pair *p, pass_mode mode, FILE *ref_in, dfx_backend *const *perf)
{
    int skipped = 0;
    bo_rng.state = 0x9E3779B97F4A7C15ull;
    for (size_t i = 0; i < bo_ncases; i++) {
        const bo_case *c = &bo_cases[i];
        if (!selected(c)) continue;
        if (mode == LIST && c->f->solo) {
            printf("%-16s (checks of the device backend itself)\n", c->op ? c->op : c->f->name);
            continue;
        }
        if ((c->device || c->f->solo) && mode != LIST && (!p->device || mode == PERF)) {
            skipped++;
            continue;
        }
        if (c->f->solo) {
            c->f->solo(p, c);
            continue;
        }
        bo_data d;
        memset(&d, 0, sizeof d);
        d.alone = -1;
        c->f->build(p, c, &d);
        if (d.alone < 0) d.alone = d.B - 1;
        if (mode == LIST) {
            printf("%-16s %s\n", c->op ? c->op : c->f->name, d.name);
        } else if (mode == PERF) {
            for (int b = 0; perf[b]; b++) {
                double ms = 0.0;
                free(run_case(perf[b], c, &d, 0, d.B, PERF_REPS, &ms));
                perf_row(c, &d, perf[b], ms);
            }
        } else if (mode == DUMP) {
            float *out = run_case(p->cpu, c, &d, 0, d.B, 0, NULL);
            if (fwrite(&d.n, sizeof d.n, 1, stdout) != 1 ||
                fwrite(out, sizeof(float), d.n, stdout) != d.n) {
                fprintf(stderr, "test_backend_ops: writing the reference outputs failed\n");
                exit(1);
            }
            free(out);
        } else {
            float *ref = p->ref ? run_case(p->ref, c, &d, 0, d.B, 0, NULL) : read_ref(ref_in, &d);
            float *got = run_case(p->test, c, &d, 0, d.B, 0, NULL);
            if (c->f->check)
                c->f->check(p, c, &d, got, ref);
            else
                bo_compare(d.name, got, ref, d.n, c->tol, d.note);
            if (c->batch_tol != BO_NO_BATCH && d.B > 1 && d.per > 0) batch_check(p, c, &d, got);
            free(ref);
            free(got);
        }
        host_free_all(&d);
    }
    if (skipped && mode != DUMP)
        printf("(%d case(s) for device backends only not run here)\n", skipped);
}

/* ---------------------------------------------------------------- modes */

static dfx_backend *cpu_backend(void)
{
    dfx_backend *cpu = dfx_backend_cpu_create(0, &bo_err);
    if (!cpu) {
        fprintf(stderr, "test_backend_ops: cpu backend: %s\n", bo_err.msg);
        exit(1);
    }
    return cpu;
}

static void table_header(void)
{
    printf("%-58s %11s %9s  %s\n", "op", "nerr", "tol", "result");
}

static int finish(void)
{
    printf("\n%s: %d failure(s)\n", failures ? "FAILED" : "passed", failures);
    return failures ? 1 : 0;
}

/* The device backends of this build that have a device here (CUDA). */
typedef struct device_kind {
    const char *name;
    dfx_backend *(*create)(dfx_error *err);
} device_kind;

static const device_kind devices[] = {
#ifdef DFX_HAVE_CUDA
    {"cuda", dfx_backend_cuda_create},
#endif
    {NULL, NULL},
};

/* Every case on every device backend against the CPU. */
static int run_devices(void)
{
#ifndef DFX_HAVE_CUDA
    printf("no CUDA device: skipping (this build has no CUDA backend)\n");
    return SKIP;
#else
    int ndev = dfx_cuda_device_count();
    if (ndev <= 0) {
        printf("no CUDA device: skipping\n");
        return SKIP;
    }
    dfx_backend *cpu = cpu_backend();
    for (const device_kind *k = devices; k->name; k++) {
        dfx_backend *dev = k->create(&bo_err);
        if (!dev) {
            fprintf(stderr, "test_backend_ops: %s\n", bo_err.msg);
            dfx_backend_destroy(cpu);
            return 1;
        }
        printf("backends: %s (reference) vs %s, %d CUDA device(s)\n\n", cpu->name, dev->name,
               ndev);
        table_header();
        bo_pair p = {cpu, cpu, dev, cpu->name, dev->name, 1, k->create};
        pass(&p, CHECK, NULL, NULL);
        dfx_backend_destroy(dev);
    }
    dfx_backend_destroy(cpu);
    return finish();
#endif
}

/* The CPU backend on this process's path against a child on the baseline
 * path: argv again, --cpu replaced by --ref-pass, its stdout a pipe. */
static int run_cpu_paths(char **argv)
{
    int fd[2];
    if (pipe(fd)) {
        perror("test_backend_ops: pipe");
        return 1;
    }
    fflush(stdout);
    pid_t pid = fork();
    if (pid < 0) {
        perror("test_backend_ops: fork");
        return 1;
    }
    if (pid == 0) {
        dup2(fd[1], 1);
        close(fd[0]);
        close(fd[1]);
        for (int i = 1; argv[i]; i++)
            if (strcmp(argv[i], "--cpu") == 0) argv[i] = "--ref-pass";
        setenv("DIFFLUX_ISA", "baseline", 1);
        execvp(argv[0], argv);
        perror("test_backend_ops: exec");
        _exit(127);
    }
    close(fd[1]);
    FILE *in = fdopen(fd[0], "rb");
    dfx_backend *cpu = cpu_backend();
    if (dfx_cpu_isa_error()) fprintf(stderr, "test_backend_ops: %s\n", dfx_cpu_isa_error());
    const char *isa = dfx_isa_name(dfx_cpu_isa());
    printf("backends: %s on the baseline path (reference, a child process) vs %s on the %s "
           "path\n\n", cpu->name, cpu->name, isa);
    table_header();
    bo_pair p = {cpu, NULL, cpu, "baseline", isa, 0, NULL};
    pass(&p, CHECK, in, NULL);
    int extra = fgetc(in) != EOF, status = 0;
    fclose(in);
    waitpid(pid, &status, 0);
    int ok = !extra && WIFEXITED(status) && WEXITSTATUS(status) == 0;
    bo_row("reference pass (baseline path, a child process) ended cleanly", ok ? 0.0 : 1.0, 0.0,
           extra ? "it wrote more cases than were compared" : "");
    dfx_backend_destroy(cpu);
    return finish();
}

static void usage(FILE *f)
{
    fprintf(f,
            "usage: test_backend_ops [--cpu | perf | --list] [-o OP[,OP...]]...\n"
            "  Runs every case of tests/backend_ops/cases.c (an op and a shape) on each\n"
            "  device backend of this build (CUDA) and on the CPU backend, the reference,\n"
            "  and compares them: one row a comparison, the normalised error\n"
            "  ||got - ref|| / ||ref|| against the case's tolerance, and where a case has a\n"
            "  batch, a sample run alone against the same sample in the batch. Exits 77\n"
            "  (skipped) when there is no CUDA backend or device.\n"
            "  --cpu    the CPU backend on both sides: this process on its instruction-set\n"
            "           path (DIFFLUX_ISA; default the best this CPU has) against a child\n"
            "           process on the baseline path; runs anywhere\n"
            "  perf     times each case on each backend (the CPU and the devices): op,\n"
            "           shape, backend, ms a call (after a warm-up, mean of %d), GFLOP/s\n"
            "           where the op's flops are counted\n"
            "  --list   prints the cases, runs nothing\n"
            "  -o OP    only the cases of op OP (repeatable, or a comma list); OP is the\n"
            "           first column of --list\n"
            "  --ref-pass  (for --cpu) writes the CPU backend's outputs of every case to\n"
            "           stdout\n",
            PERF_REPS);
}

int main(int argc, char **argv)
{
    pass_mode mode = CHECK;
    int cpu_paths = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            usage(stdout);
            return 0;
        } else if (strcmp(argv[i], "-o") == 0 && i + 1 < argc) {
            /* a copy: argv goes to the --cpu child as it came */
            for (char *s = strtok(strdup(argv[++i]), ","); s; s = strtok(NULL, ","))
                if (nonly < (int)(sizeof only / sizeof only[0])) only[nonly++] = s;
        } else if (strcmp(argv[i], "perf") == 0) {
            mode = PERF;
        } else if (strcmp(argv[i], "--list") == 0) {
            mode = LIST;
        } else if (strcmp(argv[i], "--ref-pass") == 0) {
            mode = DUMP;
        } else if (strcmp(argv[i], "--cpu") == 0) {
            cpu_paths = 1;
        } else {
            fprintf(stderr, "test_backend_ops: unknown argument '%s'\n", argv[i]);
            usage(stderr);
            return 2;
        }
    }
    if (mode == CHECK) return cpu_paths ? run_cpu_paths(argv) : run_devices();
    dfx_backend *cpu = cpu_backend();
    bo_pair p = {cpu, cpu, cpu, cpu->name, cpu->name, 0, NULL};
    if (mode == PERF) {
        dfx_backend *list[8] = {cpu};
        int n = 1;
#ifdef DFX_HAVE_CUDA
        if (dfx_cuda_device_count() > 0)
#endif
            for (const device_kind *k = devices; k->name && n < 7; k++)
                if (!(list[n++] = k->create(&bo_err))) bo_die("create", cpu);
        printf("%-16s %-58s %-6s %10s %10s\n", "op", "shape", "backend", "ms", "GFLOP/s");
        pass(&p, PERF, NULL, list);
        for (int b = 1; b < n; b++) dfx_backend_destroy(list[b]);
    } else {
        pass(&p, mode, NULL, NULL);
    }
    dfx_backend_destroy(cpu);
    return 0;
}
