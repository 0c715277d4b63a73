/* Drawing samples from the command line: the sampling options shared by
 * `sample`, `eval` and `sweep`, model and sampler set-up, and a draw of n
 * samples with a progress bar, split across MPI ranks when there are
 * several (sample i is the same whatever the split). */
#ifndef DFX_CLI_DRAW_H
#define DFX_CLI_DRAW_H

#include "args.h"
#include "difflux.h"

typedef struct cli_draw {
    /* option values */
    const char *model, *sampler, *device, *precision, *grid, *noise, *path, *cls, *recipe,
        *max_memory, *scheduler, *init, *restart, *variant, *start_name, *perturb,
        *guide_model;
    int order;
    int steps, batch, threads, corrector_steps, inner, path_start, no_denoise, quiet, progress,
        verbose, allow_unstable, start_langevin;
    uint64_t seed, start, max_nfe;
    double rho, shift, t_noise, t_data, rtol, atol, eps0, guidance, eta, snr, delta,
        anneal, churn, s_tmin, s_tmax, s_noise, start_snr, guide_weight;
    /* parsed */
    dfx_grid g;
    dfx_noise nz;
    dfx_path_family fam;
    int class_id;
    dfx_perturb perturb_kind; /* --perturb, parsed */
    double perturb_lambda;
    int start_mode; /* --start, parsed (DFX_START_*) */
    int start_steps; /* the Langevin steps at the start of the last run (resolved) */
    int restart_n; /* --restart, parsed */
    double restart_iv[DFX_RESTART_MAX][4];
    double mem_limit; /* --max-memory in bytes, 0 = what the machine has */
    /* opened */
    dfx_backend *be;
    dfx_model *m;
    const dfx_model_info *mi;
    dfx_sample_opts o;
    size_t dim;
    float *init_z; /* --init: the start noise, [init_rows, dim] */
} cli_draw;

/* A progress bar on stderr: "label [####......] 40%  4/10 unit  2.1s
 * elapsed, ~3s left", redrawn at most every 0.1 s (always when final, which
 * ends the line). */
typedef struct cli_bar {
    int enabled;
    const char *label, *unit;
    long total, done;
    double start, last;
} cli_bar;
void cli_bar_draw(cli_bar *b, double frac, int final);

/* Defaults, and the option table entries (at most CLI_DRAW_OPTS) appended
 * after the n of the command's own; returns the length of the whole table.
 * `sweep` leaves out sampler and steps (with_sampler 0). */
enum { CLI_DRAW_OPTS = 56 };
void cli_draw_init(cli_draw *d);
int cli_draw_options(cli_draw *d, cli_opt *opts, int n, int with_sampler);
/* Checks the options that need no model, and sets the batch size for n
 * samples (default min(n, 64)); CLI_OK or CLI_USAGE (message printed). */
int cli_draw_check(const char *cmd, cli_draw *d, const cli_opt *opts, int nopts, long n);
/* Rank 0 checks the outputs (cli_check_outputs) and every rank agrees:
 * CLI_OK, or the exit code. */
int cli_draw_outputs(const char *cmd, const cli_file *outs, int nout, const cli_file *ins,
                     int nin);
/* A backend for --device, --threads and --precision (NULL: left as it
 * is); NULL with err set. */
dfx_backend *cli_backend_open(const char *device, int threads, const char *precision,
                              dfx_error *err);
/* Backend (one CUDA device per MPI rank on a node), model, class and the
 * sampler options; -1 with err set. */
int cli_draw_open(cli_draw *d, const cli_opt *opts, int nopts, dfx_error *err);
/* Room for n samples on rank 0 (*images stays NULL elsewhere); -1 with err
 * set. */
int cli_draw_images(const cli_draw *d, long n, float **images, dfx_error *err);
/* Samples start .. start + n - 1 with d->o (sampler and steps as set there)
 * into images [n, dim] on rank 0 (others may pass NULL), in batches of
 * d->batch, split in contiguous blocks across MPI ranks and gathered on rank
 * 0. nfe: mean network evaluations per sample over all n. label: the
 * progress bar's prefix. Every rank must call it. */
int cli_draw_run(cli_draw *d, long n, float *images, double *nfe, const char *label,
                 dfx_error *err);
void cli_draw_close(cli_draw *d);

/* Memory (after cli_draw_open, before cli_draw_run): the bytes a draw of n
 * samples needs (the weights, the sampler's state and the network's
 * scratch for its batches, the n samples on rank 0, plus `extra` host
 * bytes the command adds, e.g. the PNG), printed with --verbose; -1 with a
 * message when that is more than --max-memory or, without it, than the
 * memory available. */
int cli_draw_memory(cli_draw *d, long n, double extra, dfx_error *err);
/* The memory this process may still use: MemAvailable of /proc/meminfo,
 * else the physical memory; *what says which. */
double cli_mem_available(const char **what);
/* The check for one figure: `need` new bytes (`total` with what is already
 * allocated) against the limit (bytes, 0 = cli_mem_available); -1 with a
 * message "<what> needs about X ...<hint>" when over. */
int cli_mem_check(double need, double total, double limit, const char *what,
                  const char *hint, dfx_error *err);

/* MPI (host/cli/mpi.c; one process when difflux was built without it or not
 * started by mpirun). */
void cli_mpi_init(int *argc, char ***argv);
int cli_have_mpi(void); /* built with MPI */
void cli_mpi_finalize(void);
int cli_mpi_rank(void);
int cli_mpi_size(void);
int cli_mpi_local_rank(void);
/* The rank's block of [0, n): [*lo, *hi). */
void cli_mpi_block(long n, int rank, int size, long *lo, long *hi);
/* Gathers each rank's block of rows (row floats each) of buf into buf on
 * rank 0 (buf holds all n rows there; the rank's own block elsewhere, at
 * offset 0). 0 or -1 with err. */
int cli_mpi_gather_rows(float *buf, long n, size_t row, dfx_error *err);
/* Sum of v over ranks, on every rank. */
double cli_mpi_sum(double v);
/* v[0..n) summed element by element over the ranks, in place on every
 * rank (one message); 0, or -1 with err set. */
int cli_mpi_sum_array(double *v, long n, dfx_error *err);
/* Largest v over ranks, on every rank. */
double cli_mpi_max(double v);
/* All ranks agree on failure: returns nonzero on every rank if rc is
 * nonzero on any. */
int cli_mpi_any(int rc);
/* cli_mpi_any, naming the other rank in err when this one did not fail. */
int cli_mpi_fail(int rc, dfx_error *err);
/* err holds only cli_mpi_fail's "another rank failed" (the other rank reports). */
int cli_mpi_other(const dfx_error *err);

#endif
