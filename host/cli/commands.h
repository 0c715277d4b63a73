/* The subcommands of difflux, in the order `difflux --help` lists them:
 * CLI_COMMAND(name, steps, one-line summary). cli.h declares the steps
 * (a cli_steps in the cmd_*.c file) and main.c runs them by name, so a new
 * command is one row here and its cmd_*.c file. No include guard: read
 * once per use. */
CLI_COMMAND("sample", cmd_sample, "draw samples and write a PNG grid (and raw .npy)")
CLI_COMMAND("eval", cmd_eval, "sample quality: FID, KID, confidence, classes, memorisation")
CLI_COMMAND("sweep", cmd_sweep, "quality against network evaluations for several samplers")
CLI_COMMAND("info", cmd_info, "describe a model file")
CLI_COMMAND("samplers", cmd_samplers, "list the samplers")
CLI_COMMAND("make-gmm", cmd_make_gmm, "build an exact Gaussian-mixture model from IDX images")
CLI_COMMAND("bench", cmd_bench, "measure sampling throughput")
CLI_COMMAND("conservativity", cmd_conservativity, "measure whether the field is a gradient")
CLI_COMMAND("likelihood", cmd_likelihood, "negative log-likelihood and bits/dim by the probability-flow ODE")
CLI_COMMAND("convert", cmd_convert, "write a diffusers model as one difflux model file")
