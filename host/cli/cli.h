/* The difflux command-line tool: one set of steps per subcommand. */
#ifndef DFX_CLI_H
#define DFX_CLI_H

#include "difflux.h"

#include <stddef.h>

/* A subcommand, in steps over its state: a zeroed struct of state_size
 * bytes that holds its options and what its run opens.
 *   parse    defaults, the option table and cli_options: CLI_GO to go on,
 *            else the exit code (CLI_OK after --help)
 *   check    the options, before any work: CLI_OK, or the exit code
 *   run      the work: 0, or -1 with err set
 *   report   after the run, its results printed and written: 0, or -1
 *   release  frees what run opened, whatever happened
 * Any step but parse may be NULL. main.c runs them; a failed run or report
 * removes the unfinished outputs, prints "difflux NAME: message" (under
 * MPI on rank 0 and on the rank that failed) and exits with CLI_FAIL. */
typedef struct cli_steps {
    size_t state_size;
    int (*parse)(void *state, int argc, char **argv);
    int (*check)(void *state);
    int (*run)(void *state, dfx_error *err);
    int (*report)(void *state, dfx_error *err);
    void (*release)(void *state);
} cli_steps;

/* extern const cli_steps cmd_sample; ... for every row of commands.h */
#define CLI_COMMAND(name, steps, summary) extern const cli_steps steps;
#include "commands.h"
#undef CLI_COMMAND

/* The shipped default model: $DIFFLUX_MODEL, else models/mnist-flow.safetensors
 * under the current directory, else the one in the source tree. */
const char *cli_default_model(void);

#endif
