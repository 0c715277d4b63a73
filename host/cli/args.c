#include "args.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

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
        if (*v == '-') {
            fprintf(stderr, "difflux %s: --%s expects a non-negative integer, got '%s'\n", cmd,
                    o->name, v);
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
