/* The difflux command-line tool: one function per subcommand. */
#ifndef DFX_CLI_H
#define DFX_CLI_H

/* int cmd_sample(int argc, char **argv); ... for every row of commands.h */
#define CLI_COMMAND(name, function, summary) int function(int argc, char **argv);
#include "commands.h"
#undef CLI_COMMAND

/* The shipped default model: $DIFFLUX_MODEL, else models/mnist-flow.safetensors
 * under the current directory, else the one in the source tree. */
const char *cli_default_model(void);

#endif
