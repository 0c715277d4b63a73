/* difflux samplers: the registry as a table. */
#include "args.h"
#include "cli.h"
#include "difflux.h"

#include <stdio.h>

static const char about[] =
    "Lists every sampler: its order of convergence (weak order for SDEs), network\n"
    "evaluations per step, default steps, whether it integrates an ODE or an SDE,\n"
    "and which model families it applies to.";

static int samplers_parse(void *state, int argc, char **argv)
{
    (void)state;
    return cli_options("samplers", "difflux samplers", about, argc, argv, NULL, 0);
}

/* The table, on stdout. */
static int samplers_run(void *state, dfx_error *err)
{
    (void)state, (void)err;
    const dfx_sampler_desc *d;
    int n = dfx_samplers(&d);
    printf("%-16s %-5s %-9s %-6s %-5s %-15s %s\n", "name", "order", "NFE/step", "steps", "kind",
           "applies to", "what it is");
    for (int i = 0; i < n; i++) {
        char nfe[16];
        if (d[i].nfe_per_step)
            snprintf(nfe, sizeof nfe, "%d", d[i].nfe_per_step);
        else
            snprintf(nfe, sizeof nfe, "adaptive");
        char steps[16];
        snprintf(steps, sizeof steps, "%d", d[i].default_steps);
        printf("%-16s %-5d %-9s %-6s %-5s %-15s %s\n", d[i].name, d[i].order, nfe,
               d[i].default_steps ? steps : "-", d[i].stochastic ? "SDE" : "ODE", d[i].families,
               d[i].summary);
    }
    return 0;
}

/* no state: one byte for calloc */
const cli_steps cmd_samplers = {1, samplers_parse, NULL, samplers_run, NULL, NULL};
