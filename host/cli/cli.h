/* The difflux command-line tool: one function per subcommand. */
#ifndef DFX_CLI_H
#define DFX_CLI_H

int cmd_sample(int argc, char **argv);
int cmd_info(int argc, char **argv);
int cmd_samplers(int argc, char **argv);
int cmd_make_gmm(int argc, char **argv);
int cmd_bench(int argc, char **argv);
int cmd_conservativity(int argc, char **argv);
int cmd_eval(int argc, char **argv);
int cmd_sweep(int argc, char **argv);

/* The shipped default model: $DIFFLUX_MODEL, else models/mnist-flow.safetensors
 * under the current directory, else the one in the source tree. */
const char *cli_default_model(void);

/* Seconds from a monotonic clock. */
double cli_now(void);

#endif
