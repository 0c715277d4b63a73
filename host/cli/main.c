/* difflux: sample diffusion, flow-matching and multiplicative models. */
#define _POSIX_C_SOURCE 200809L
#include "cli.h"
#include "args.h"
#include "difflux.h"
#include "draw.h"
#include "io/fileio.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#ifndef DFX_SOURCE_MODEL
#define DFX_SOURCE_MODEL "models/mnist-flow.safetensors"
#endif

const char *cli_default_model(void)
{
    const char *env = getenv("DIFFLUX_MODEL");
    if (env && *env) return env;
    const char *local = "models/mnist-flow.safetensors";
    if (access(local, R_OK) == 0) return local;
    return DFX_SOURCE_MODEL;
}

typedef struct command {
    const char *name;
    const cli_steps *steps;
    const char *summary;
} command;

static const command commands[] = {
#define CLI_COMMAND(name, steps, summary) {name, &steps, summary},
#include "commands.h"
#undef CLI_COMMAND
};
enum { NCOMMANDS = sizeof commands / sizeof commands[0] };

static void usage(FILE *f)
{
    fprintf(f, "usage: difflux COMMAND [options]\n\n"
               "Draws samples from diffusion, flow-matching and analytic models of images.\n\n"
               "commands:\n");
    int width = 0; /* the longest name: the summaries in one column */
    for (int i = 0; i < NCOMMANDS; i++)
        if ((int)strlen(commands[i].name) > width) width = (int)strlen(commands[i].name);
    for (int i = 0; i < NCOMMANDS; i++)
        fprintf(f, "  %-*s  %s\n", width, commands[i].name, commands[i].summary);
    fprintf(f, "\n`difflux COMMAND --help` describes each command's options.\n"
               "`difflux sample` alone samples the shipped flow-matching model into grid.png.\n");
}

/* Run and report, then release: CLI_OK, or CLI_FAIL with the message
 * printed and the unfinished outputs removed. */
static int run_and_report(const char *name, const cli_steps *s, void *state)
{
    dfx_error err = {{0}};
    int rc = CLI_OK;
    if ((s->run && s->run(state, &err)) || (s->report && s->report(state, &err))) {
        rc = CLI_FAIL;
        dfx_outputs_abort();
        if (cli_mpi_rank() == 0 || !cli_mpi_other(&err))
            fprintf(stderr, "difflux %s: %s\n", name, err.msg);
    }
    if (s->release) s->release(state);
    return rc;
}

/* A command's steps (cli.h) on argv[0..argc), the arguments after its name. */
static int run_steps(const char *name, const cli_steps *s, int argc, char **argv)
{
    void *state = calloc(1, s->state_size);
    if (!state) return fprintf(stderr, "difflux %s: out of memory\n", name), CLI_FAIL;
    int rc = s->parse(state, argc, argv);
    if (rc == CLI_GO && (!s->check || (rc = s->check(state)) == CLI_OK))
        rc = run_and_report(name, s, state);
    free(state);
    return rc;
}

/* OpenBLAS falls back to slow SSE3 kernels on CPU models it does not know
 * (dfx_blas_better_core): start again with OPENBLAS_CORETYPE naming the
 * right ones. OPENBLAS_CORETYPE set by the user is left alone. */
static void blas_kernels(char **argv)
{
    if (getenv("OPENBLAS_CORETYPE")) return;
    const char *core = dfx_blas_better_core();
    if (!core || setenv("OPENBLAS_CORETYPE", core, 1) != 0) return;
    execv("/proc/self/exe", argv);
    unsetenv("OPENBLAS_CORETYPE"); /* no /proc: carry on with what we have */
}

/* SIGINT and SIGTERM: remove the temporary files of unfinished outputs and
 * stop at once, from any thread, even in the middle of a long batch. Only
 * async-signal-safe calls here (unlink, write, _exit). */
static int stderr_tty;

static void on_signal(int sig)
{
    if (!dfx_tmp_signal(sig)) return; /* renaming a run's outputs: raised again after */
    static const char term[] = "difflux: stopped by SIGTERM; unfinished outputs removed\n";
    static const char intr[] = "difflux: interrupted (SIGINT); unfinished outputs removed\n";
    ssize_t w = stderr_tty ? write(2, "\n", 1) : 0;
    if (sig == SIGINT)
        w = write(2, intr, sizeof intr - 1);
    else
        w = write(2, term, sizeof term - 1);
    (void)w;
    _exit(128 + sig);
}

static void catch_signals(void)
{
    stderr_tty = isatty(2);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaddset(&sa.sa_mask, SIGINT);
    sigaddset(&sa.sa_mask, SIGTERM);
    const int sigs[2] = {SIGINT, SIGTERM};
    for (int i = 0; i < 2; i++) {
        struct sigaction old;
        /* a signal ignored on entry (nohup, a shell's background job) stays ignored */
        if (sigaction(sigs[i], NULL, &old) == 0 && old.sa_handler == SIG_IGN) continue;
        sigaction(sigs[i], &sa, NULL);
    }
}

static int dispatch(int argc, char **argv)
{
    const char *c = argv[1];
    for (int i = 0; i < NCOMMANDS; i++)
        if (strcmp(c, commands[i].name) == 0)
            return run_steps(c, commands[i].steps, argc - 2, argv + 2);
    if (strcmp(c, "--help") == 0 || strcmp(c, "-h") == 0 || strcmp(c, "help") == 0) {
        usage(stdout);
        return CLI_OK;
    }
    if (strcmp(c, "--version") == 0) {
        printf("difflux %s (%s backend%s%s; CPU path %s)\n", DFX_VERSION,
               dfx_have_cuda() ? "cpu and cuda" : "cpu", dfx_have_cuda() ? "s" : "",
               cli_have_mpi() ? ", MPI" : "", dfx_cpu_path());
        if (dfx_cpu_path_error()) {
            fprintf(stderr, "difflux: %s\n", dfx_cpu_path_error());
            return CLI_FAIL;
        }
        return CLI_OK;
    }
    fprintf(stderr, "difflux: unknown command '%s' (try difflux --help)\n", c);
    return CLI_USAGE;
}

int main(int argc, char **argv)
{
    blas_kernels(argv);
    if (argc < 2) {
        usage(stderr);
        return CLI_USAGE;
    }
    catch_signals();
    cli_mpi_init(&argc, &argv);
    int rc = dispatch(argc, argv);
    cli_mpi_finalize();
    return rc;
}
