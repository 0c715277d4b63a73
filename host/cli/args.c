#define _XOPEN_SOURCE 700
#include "args.h"
#include "difflux.h"
#include "io/fileio.h"
#include "core/error.h"

#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

const cli_opt *cli_find(const cli_opt *opts, int n, const char *name)
{
    for (int i = 0; i < n; i++)
        if (strcmp(opts[i].name, name) == 0) return &opts[i];
    return NULL;
}

static int set_value(const char *cmd, cli_opt *o, const char *v)
{
    char *end = NULL;
    errno = 0;
    /* strto* skip leading blanks, and strtoull takes " -1" as 2^64 - 1 */
    if ((o->type == OPT_INT || o->type == OPT_DOUBLE) && isspace((unsigned char)*v)) {
        fprintf(stderr, "difflux %s: --%s expects a number without leading blanks, got '%s'\n",
                cmd, o->name, v);
        return -1;
    }
    switch (o->type) {
    case OPT_INT: {
        long x = strtol(v, &end, 10);
        if (!*v || *end || errno || x < INT_MIN || x > INT_MAX) {
            fprintf(stderr, "difflux %s: --%s expects an integer, got '%s'\n", cmd, o->name, v);
            return -1;
        }
        *(int *)o->ptr = (int)x;
        break;
    }
    case OPT_U64: {
        if (!isdigit((unsigned char)*v)) {
            fprintf(stderr,
                    "difflux %s: --%s expects a non-negative integer (digits only), got '%s'\n",
                    cmd, o->name, v);
            return -1;
        }
        unsigned long long x = strtoull(v, &end, 10);
        if (!*v || *end || errno) {
            fprintf(stderr, "difflux %s: --%s expects a non-negative integer, got '%s'\n", cmd,
                    o->name, v);
            return -1;
        }
        *(uint64_t *)o->ptr = (uint64_t)x;
        break;
    }
    case OPT_DOUBLE: {
        double x = strtod(v, &end);
        if (!*v || *end || errno || !isfinite(x)) {
            fprintf(stderr, "difflux %s: --%s expects a number, got '%s'\n", cmd, o->name, v);
            return -1;
        }
        *(double *)o->ptr = x;
        break;
    }
    case OPT_STR:
        *(const char **)o->ptr = v;
        break;
    case OPT_FLAG:
        *(int *)o->ptr = 1;
        break;
    }
    o->set = 1;
    return 0;
}

int cli_parse(const char *cmd, int argc, char **argv, cli_opt *opts, int n, int *help)
{
    *help = 0;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            *help = 1;
            return 0;
        }
        if (strncmp(a, "--", 2) != 0 || !a[2]) {
            fprintf(stderr, "difflux %s: unexpected argument '%s' (options start with --; see "
                            "difflux %s --help)\n",
                    cmd, a, cmd);
            return CLI_USAGE;
        }
        char name[64];
        const char *eq = strchr(a + 2, '=');
        size_t len = eq ? (size_t)(eq - a - 2) : strlen(a + 2);
        if (len >= sizeof name) len = sizeof name - 1;
        memcpy(name, a + 2, len);
        name[len] = 0;
        cli_opt *o = (cli_opt *)cli_find(opts, n, name);
        if (!o) {
            fprintf(stderr, "difflux %s: unknown option '--%s' (see difflux %s --help)\n", cmd,
                    name, cmd);
            return CLI_USAGE;
        }
        if (o->type == OPT_FLAG) {
            if (eq) {
                fprintf(stderr, "difflux %s: --%s takes no value\n", cmd, name);
                return CLI_USAGE;
            }
            set_value(cmd, o, "");
            continue;
        }
        const char *v = eq ? eq + 1 : NULL;
        if (!v) {
            if (i + 1 >= argc) {
                fprintf(stderr, "difflux %s: --%s needs a value (%s)\n", cmd, name,
                        o->metavar ? o->metavar : "VALUE");
                return CLI_USAGE;
            }
            v = argv[++i];
        }
        if (set_value(cmd, o, v)) return CLI_USAGE;
    }
    return CLI_OK;
}

int cli_options(const char *cmd, const char *synopsis, const char *about, int argc, char **argv,
                cli_opt *opts, int n)
{
    int help, rc = cli_parse(cmd, argc, argv, opts, n, &help);
    if (rc) return rc;
    if (!help) return CLI_GO;
    cli_usage(stdout, synopsis, about, opts, n);
    return CLI_OK;
}

cli_opt cli_opt_model(const char **file)
{
    return (cli_opt){"model", OPT_STR, file, "FILE",
                     "model file or diffusers folder (default: models/mnist-flow.safetensors)", 0};
}

cli_opt cli_opt_scheduler(const char **file)
{
    return (cli_opt){"scheduler", OPT_STR, file, "JSON",
                     "diffusers models: this scheduler_config.json instead of the model's own",
                     0};
}

dfx_model *cli_model_load(const char *model, const char *scheduler, dfx_backend *be,
                          dfx_error *err)
{
    if (!scheduler) return dfx_model_load(model, be, err);
    dfx_model *m = dfx_model_load_diffusers(model, scheduler, be, err);
    if (!m)
        dfx_fail_prefix(err, "--scheduler applies to diffusers models (a converted difflux file "
                             "keeps the schedule it was converted with)");
    return m;
}

cli_opt cli_opt_sampler(const char **name)
{
    return (cli_opt){"sampler", OPT_STR, name, "NAME",
                     "sampler (heun); `difflux samplers` lists them", 0};
}

cli_opt cli_opt_device(const char **device)
{
    return (cli_opt){"device", OPT_STR, device, "D", "cpu, cuda or auto (auto)", 0};
}

cli_opt cli_opt_precision(const char **p)
{
    return (cli_opt){"precision", OPT_STR, p, "P",
                     "matrix products in fp32 (default), or tf32 / bf16 tensor-core math (cuda)",
                     0};
}

cli_opt cli_opt_threads(int *threads)
{
    return (cli_opt){"threads", OPT_INT, threads, "T", "CPU threads, at most 1024 (0 = all cores)",
                     0};
}

cli_opt cli_opt_max_memory(const char **size)
{
    return (cli_opt){"max-memory", OPT_STR, size, "SIZE",
                     "refuse runs needing more, e.g. 8G, 512M (default: the memory available)", 0};
}

void cli_usage(FILE *f, const char *synopsis, const char *about, const cli_opt *opts, int n)
{
    fprintf(f, "usage: %s\n\n%s\n", synopsis, about);
    if (n) fprintf(f, "\noptions:\n");
    for (int i = 0; i < n; i++) {
        char left[64];
        snprintf(left, sizeof left, "--%s%s%s", opts[i].name, opts[i].metavar ? " " : "",
                 opts[i].metavar ? opts[i].metavar : "");
        fprintf(f, "  %-22s %s\n", left, opts[i].help);
    }
    fprintf(f, "  %-22s %s\n", "--help", "show this help");
}

int cli_parse_list(const char *s, double *v, int cap, int *n)
{
    *n = 0;
    while (*s) {
        char *end;
        double x = strtod(s, &end);
        if (end == s || !isfinite(x) || *n >= cap) return -1;
        v[(*n)++] = x;
        s = end;
        if (*s == ',') s++;
        else if (*s) return -1;
    }
    return *n ? 0 : -1;
}

int cli_check_threads(const char *cmd, int threads)
{
    if (threads >= 0 && threads <= CLI_MAX_THREADS) return CLI_OK;
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    fprintf(stderr, "difflux %s: --threads must be in [0, %d] (0 = all %ld cores), got %d\n", cmd,
            CLI_MAX_THREADS, cores, threads);
    return CLI_USAGE;
}

int cli_check_max_memory(const char *cmd, const char *arg, double *bytes)
{
    *bytes = 0;
    if (!arg || cli_parse_bytes(arg, bytes) == 0) return CLI_OK;
    fprintf(stderr, "difflux %s: --max-memory expects a size like 8G, 512M or 65536, got '%s'\n",
            cmd, arg);
    return CLI_USAGE;
}

const dfx_sampler_desc *cli_sampler_desc(const char *name)
{
    const dfx_sampler_desc *descs;
    int nd = dfx_samplers(&descs);
    for (int i = 0; i < nd; i++)
        if (strcmp(descs[i].name, name) == 0) return &descs[i];
    return NULL;
}

int cli_known_sampler(const char *name)
{
    return cli_sampler_desc(name) != NULL;
}

int cli_check_sampler(const char *cmd, const char *name)
{
    if (cli_known_sampler(name)) return CLI_OK;
    fprintf(stderr, "difflux %s: unknown --sampler '%s' (difflux samplers lists them)\n", cmd,
            name);
    return CLI_USAGE;
}

int cli_parse_bytes(const char *s, double *bytes)
{
    if (!s || !isdigit((unsigned char)*s)) return -1;
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || !isfinite(v) || v <= 0) return -1;
    double unit = 1;
    switch (toupper((unsigned char)*end)) {
    case 0: break;
    case 'K': unit = 1024.0; break;
    case 'M': unit = 1024.0 * 1024; break;
    case 'G': unit = 1024.0 * 1024 * 1024; break;
    case 'T': unit = 1024.0 * 1024 * 1024 * 1024; break;
    default: return -1;
    }
    if (*end) {
        end++;
        if (*end == 'i') end++;
        if (toupper((unsigned char)*end) == 'B') end++;
    } else if (v != floor(v)) {
        return -1; /* a fraction of a byte */
    }
    if (*end) return -1;
    *bytes = v * unit;
    return 0;
}

const char *cli_format_bytes(double b, char *buf, size_t cap)
{
    static const char *const units[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB"};
    int u = 0;
    while (b >= 1024.0 && u < 5) b /= 1024.0, u++;
    snprintf(buf, cap, u ? "%.3g %s" : "%.0f %s", b, units[u]);
    return buf;
}

/* dir/base -> realpath(dir)/base; 0, or -1 with errno when dir is not there */
static int canonical(const char *path, char *out, size_t cap)
{
    const char *slash = strrchr(path, '/');
    char dir[4096];
    const char *base = slash ? slash + 1 : path;
    if (slash) {
        size_t len = (size_t)(slash - path);
        if (len >= sizeof dir) return errno = ENAMETOOLONG, -1;
        memcpy(dir, path, len);
        dir[len] = 0;
        if (len == 0) snprintf(dir, sizeof dir, "/");
    } else {
        snprintf(dir, sizeof dir, ".");
    }
    char *real = realpath(dir, NULL);
    if (!real) return -1;
    struct stat st;
    int isdir = stat(real, &st) == 0 && S_ISDIR(st.st_mode);
    int n = snprintf(out, cap, "%s/%s", strcmp(real, "/") == 0 ? "" : real, base);
    free(real);
    if (!isdir) return errno = ENOTDIR, -1;
    return n > 0 && (size_t)n < cap ? 0 : (errno = ENAMETOOLONG, -1);
}

/* The same file: the same canonical name, or the same inode where both exist. */
static int same_file(const char *a, const char *b)
{
    char ca[8192], cb[8192];
    if (canonical(a, ca, sizeof ca) == 0 && canonical(b, cb, sizeof cb) == 0 &&
        strcmp(ca, cb) == 0)
        return 1;
    struct stat sa, sb;
    return stat(a, &sa) == 0 && stat(b, &sb) == 0 && sa.st_dev == sb.st_dev &&
           sa.st_ino == sb.st_ino;
}

int cli_check_outputs(const char *cmd, const cli_file *outs, int nout, const cli_file *ins,
                      int nin)
{
    for (int i = 0; i < nout; i++) {
        const char *p = outs[i].path;
        if (!p) continue;
        char c[8192];
        struct stat st;
        size_t len = strlen(p);
        if (len == 0 || p[len - 1] == '/' || (stat(p, &st) == 0 && S_ISDIR(st.st_mode))) {
            fprintf(stderr, "difflux %s: --%s '%s' names a directory, not a file\n", cmd,
                    outs[i].opt, p);
            return CLI_USAGE;
        }
        if (canonical(p, c, sizeof c) != 0) {
            int e = errno;
            const char *slash = strrchr(p, '/');
            int dl = slash ? (int)(slash - p) : 1;
            fprintf(stderr, "difflux %s: --%s: cannot write '%s': the directory '%.*s' %s\n",
                    cmd, outs[i].opt, p, dl ? dl : 1, slash ? p : ".",
                    e == ENOENT    ? "does not exist"
                    : e == ENOTDIR ? "is not a directory"
                                   : strerror(e));
            return CLI_FAIL;
        }
        char *slash = strrchr(c, '/');
        *slash = 0;
        if (access(*c ? c : "/", W_OK | X_OK) != 0) {
            fprintf(stderr, "difflux %s: --%s: cannot write '%s': directory %s: %s\n", cmd,
                    outs[i].opt, p, *c ? c : "/", strerror(errno));
            return CLI_FAIL;
        }
        for (int j = 0; j < i; j++)
            if (outs[j].path && same_file(p, outs[j].path)) {
                fprintf(stderr,
                        "difflux %s: --%s '%s' and --%s '%s' name the same file; one would "
                        "overwrite the other\n",
                        cmd, outs[j].opt, outs[j].path, outs[i].opt, p);
                return CLI_USAGE;
            }
        for (int j = 0; j < nin; j++)
            if (ins[j].path && same_file(p, ins[j].path)) {
                fprintf(stderr,
                        "difflux %s: --%s '%s' would overwrite the input --%s '%s'\n", cmd,
                        outs[i].opt, p, ins[j].opt, ins[j].path);
                return CLI_USAGE;
            }
    }
    return CLI_OK;
}

int cli_write_plot(const char *file, int ncols, int npanels, const dfx_plot_panel *panels,
                   int width, int height, dfx_error *err)
{
    char tmp[4200];
    int rc = dfx_outputs_adopt(file, tmp, sizeof tmp, err);
    if (rc == 0) {
        rc = dfx_plot_png(tmp, ncols, npanels, panels, width, height, err);
        if (dfx_outputs_adopt_done(tmp, rc == 0, rc == 0 ? err : NULL)) rc = -1;
    }
    return rc;
}
