/* A small table-driven parser for `--name value` / `--name=value` options. */
#ifndef DFX_CLI_ARGS_H
#define DFX_CLI_ARGS_H

#include <stdint.h>
#include <stdio.h>

#include "difflux.h"

typedef enum { OPT_INT, OPT_U64, OPT_DOUBLE, OPT_STR, OPT_FLAG } cli_type;

typedef struct cli_opt {
    const char *name; /* without the leading dashes */
    cli_type type;
    void *ptr;        /* int*, uint64_t*, double*, const char**, int* */
    const char *metavar;
    const char *help;
    int set;          /* filled by the parser */
} cli_opt;

/* Exit codes of the command-line tool, and CLI_GO, none: "go on with the
 * command" (cli_options, cli_steps in cli.h). */
enum { CLI_GO = -1, CLI_OK = 0, CLI_FAIL = 1, CLI_USAGE = 2 };

/* Parses argv[0..argc) (after the command name). Returns CLI_OK, or
 * CLI_USAGE with a message on stderr; *help is set by --help / -h. */
int cli_parse(const char *cmd, int argc, char **argv, cli_opt *opts, int n, int *help);
void cli_usage(FILE *f, const char *synopsis, const char *about, const cli_opt *opts, int n);
const cli_opt *cli_find(const cli_opt *opts, int n, const char *name);
/* The opening of every command: cli_parse, and with --help the usage
 * (cli_usage) on stdout. CLI_GO when the command goes on, else its exit code. */
int cli_options(const char *cmd, const char *synopsis, const char *about, int argc, char **argv,
                cli_opt *opts, int n);

/* The option rows several commands share, each described here once
 * (`--device` of sample, eval and sweep adds MPI: draw.c). */
cli_opt cli_opt_model(const char **file);      /* --model FILE */
cli_opt cli_opt_scheduler(const char **file);  /* --scheduler JSON (diffusers models) */
/* The model, with a diffusers scheduler config in place of its own if given. */
dfx_model *cli_model_load(const char *model, const char *scheduler, dfx_backend *be,
                          dfx_error *err);
cli_opt cli_opt_sampler(const char **name);    /* --sampler NAME (heun) */
cli_opt cli_opt_device(const char **device);   /* --device D, one process */
cli_opt cli_opt_precision(const char **p);     /* --precision P */
cli_opt cli_opt_threads(int *threads);         /* --threads T */
cli_opt cli_opt_max_memory(const char **size); /* --max-memory SIZE */

/* "a,b,c": 1 to cap finite numbers into v[*n]; -1 on anything else. */
int cli_parse_list(const char *s, double *v, int cap, int *n);

/* --threads: at most CLI_MAX_THREADS (OpenMP would end the process on a
 * number it cannot start); CLI_OK, or CLI_USAGE with a message. */
enum { CLI_MAX_THREADS = 1024 };
int cli_check_threads(const char *cmd, int threads);
/* "8G", "512M", "64K", "1.5GiB", "4096" (bytes; K = 1024): 0, or -1. */
int cli_parse_bytes(const char *s, double *bytes);
/* --max-memory (NULL: not given, *bytes = 0); CLI_OK, or CLI_USAGE with a message. */
int cli_check_max_memory(const char *cmd, const char *arg, double *bytes);
/* The sampler `name` of dfx_samplers(), or NULL */
const dfx_sampler_desc *cli_sampler_desc(const char *name);
/* 1 when name is a sampler of dfx_samplers() */
int cli_known_sampler(const char *name);
/* --sampler: CLI_OK, or CLI_USAGE with a message when name is no sampler. */
int cli_check_sampler(const char *cmd, const char *name);
/* "1.5 GiB" */
const char *cli_format_bytes(double bytes, char *buf, size_t cap);

/* An option naming a file (path NULL: not given). */
typedef struct cli_file {
    const char *opt, *path;
} cli_file;
/* Before any work: every output's directory exists and is writable, no
 * output is a directory, no two outputs name the same file (also through
 * ./x, a symbolic or a hard link) and no output is one of the inputs.
 * CLI_OK, or CLI_USAGE / CLI_FAIL with a message naming the options. */
int cli_check_outputs(const char *cmd, const cli_file *outs, int nout, const cli_file *ins,
                      int nin);
/* dfx_plot_png into file through a temporary, renamed with the outputs of
 * dfx_outputs_begin .. commit, or at once outside them; 0 or -1 with err. */
int cli_write_plot(const char *file, int ncols, int npanels, const dfx_plot_panel *panels,
                   int width, int height, dfx_error *err);

#endif
