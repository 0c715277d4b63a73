/* A small table-driven parser for `--name value` / `--name=value` options. */
#ifndef DFX_CLI_ARGS_H
#define DFX_CLI_ARGS_H

#include <stdint.h>
#include <stdio.h>

typedef enum { OPT_INT, OPT_U64, OPT_DOUBLE, OPT_STR, OPT_FLAG } cli_type;

typedef struct cli_opt {
    const char *name; /* without the leading dashes */
    cli_type type;
    void *ptr;        /* int*, uint64_t*, double*, const char**, int* */
    const char *metavar;
    const char *help;
    int set;          /* filled by the parser */
} cli_opt;

/* Exit codes of the command-line tool. */
enum { CLI_OK = 0, CLI_FAIL = 1, CLI_USAGE = 2 };

/* Parses argv[0..argc) (after the command name). Returns CLI_OK, or
 * CLI_USAGE with a message on stderr; *help is set by --help / -h. */
int cli_parse(const char *cmd, int argc, char **argv, cli_opt *opts, int n, int *help);
void cli_usage(FILE *f, const char *synopsis, const char *about, const cli_opt *opts, int n);
const cli_opt *cli_find(const cli_opt *opts, int n, const char *name);
/* "a,b,c": 1 to cap finite numbers into v[*n]; -1 on anything else. */
int cli_parse_list(const char *s, double *v, int cap, int *n);

#endif
