/* Several processes (mpirun -np K difflux ...): each draws a contiguous
 * block of the sample indices and rank 0 gathers them. Without MPI in the
 * build, or when not started by mpirun, this is one process of rank 0. */
#define _POSIX_C_SOURCE 200809L
#include "draw.h"
#include "core/error.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>

#ifdef DFX_HAVE_MPI
#include <mpi.h>

static int g_on, g_rank, g_size = 1, g_local;

int cli_have_mpi(void) { return 1; }

/* Started by a launcher (Open MPI, MPICH/PMI, Slurm) rather than by hand:
 * a lone `difflux` does not initialise MPI at all. */
static int launched(void)
{
    const char *vars[] = {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "PMI_RANK",
                          "MPI_LOCALNRANKS"};
    for (size_t i = 0; i < sizeof vars / sizeof vars[0]; i++)
        if (getenv(vars[i])) return 1;
    return 0;
}

void cli_mpi_init(int *argc, char ***argv)
{
    if (!launched()) return;
    if (MPI_Init(argc, argv) != MPI_SUCCESS) return;
    g_on = 1;
    MPI_Comm_rank(MPI_COMM_WORLD, &g_rank);
    MPI_Comm_size(MPI_COMM_WORLD, &g_size);
    MPI_Comm node;
    if (MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, g_rank, MPI_INFO_NULL, &node) ==
        MPI_SUCCESS) {
        MPI_Comm_rank(node, &g_local);
        MPI_Comm_free(&node);
    }
}

void cli_mpi_finalize(void)
{
    if (g_on) MPI_Finalize();
    g_on = 0;
}

int cli_mpi_rank(void) { return g_rank; }
int cli_mpi_size(void) { return g_size; }
int cli_mpi_local_rank(void) { return g_local; }

int cli_mpi_gather_rows(float *buf, long n, size_t row, dfx_error *err)
{
    if (g_size == 1) return 0;
    int *counts = malloc((size_t)g_size * sizeof(int)), *displs = malloc((size_t)g_size * sizeof(int));
    if (!counts || !displs) {
        free(counts);
        free(displs);
        return dfx_fail(err, "out of memory gathering samples");
    }
    int rc = 0;
    for (int r = 0; r < g_size; r++) {
        long lo, hi;
        cli_mpi_block(n, r, g_size, &lo, &hi);
        if ((double)hi * (double)row > (double)INT_MAX) rc = -1;
        counts[r] = (int)((hi - lo) * (long)row);
        displs[r] = (int)(lo * (long)row);
    }
    if (rc) {
        free(counts);
        free(displs);
        return dfx_fail(err, "%ld samples of %zu values are too many to gather in one message "
                             "(split the run with --start-index)",
                        n, row);
    }
    int me = counts[g_rank];
    int e = g_rank == 0
                ? MPI_Gatherv(MPI_IN_PLACE, me, MPI_FLOAT, buf, counts, displs, MPI_FLOAT, 0,
                              MPI_COMM_WORLD)
                : MPI_Gatherv(buf, me, MPI_FLOAT, NULL, counts, displs, MPI_FLOAT, 0,
                              MPI_COMM_WORLD);
    free(counts);
    free(displs);
    if (e != MPI_SUCCESS) return dfx_fail(err, "MPI_Gatherv failed (error %d)", e);
    return 0;
}

double cli_mpi_sum(double v)
{
    if (g_size == 1) return v;
    double s = 0.0;
    MPI_Allreduce(&v, &s, 1, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
    return s;
}

double cli_mpi_max(double v)
{
    if (g_size == 1) return v;
    double s = 0.0;
    MPI_Allreduce(&v, &s, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
    return s;
}

int cli_mpi_sum_array(double *v, long n, dfx_error *err)
{
    if (g_size == 1 || n < 1) return 0;
    if (n > INT_MAX) return dfx_fail(err, "%ld values are too many to sum in one message", n);
    int e = MPI_Allreduce(MPI_IN_PLACE, v, (int)n, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
    return e == MPI_SUCCESS ? 0 : dfx_fail(err, "MPI_Allreduce failed (error %d)", e);
}

int cli_mpi_any(int rc)
{
    if (g_size == 1) return rc != 0;
    int mine = rc != 0, any = 0;
    MPI_Allreduce(&mine, &any, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
    return any;
}

#else /* one process */

int cli_have_mpi(void) { return 0; }

void cli_mpi_init(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
}
void cli_mpi_finalize(void) {}
int cli_mpi_rank(void) { return 0; }
int cli_mpi_size(void) { return 1; }
int cli_mpi_local_rank(void) { return 0; }
int cli_mpi_gather_rows(float *buf, long n, size_t row, dfx_error *err)
{
    (void)buf;
    (void)n;
    (void)row;
    (void)err;
    return 0;
}
double cli_mpi_sum(double v) { return v; }
int cli_mpi_sum_array(double *v, long n, dfx_error *err)
{
    (void)v;
    (void)n;
    (void)err;
    return 0;
}
double cli_mpi_max(double v) { return v; }
int cli_mpi_any(int rc) { return rc != 0; }

#endif

void cli_mpi_block(long n, int rank, int size, long *lo, long *hi)
{
    /* floor(n r / size) without overflow */
    *lo = n / size * rank + (n % size) * rank / size;
    *hi = n / size * (rank + 1) + (n % size) * (rank + 1) / size;
}

int cli_mpi_fail(int rc, dfx_error *err)
{
    if (!cli_mpi_any(rc)) return 0;
    if (rc == 0) dfx_fail(err, "another MPI rank failed");
    return -1;
}

int cli_mpi_other(const dfx_error *err)
{
    return strcmp(err->msg, "another MPI rank failed") == 0;
}
