/* difflux samplers: the registry as a table. */
#include "args.h"
#include "cli.h"
#include "difflux.h"

#include <stdio.h>

static const char about[] =
    "Lists every sampler: its order of convergence (weak order for SDEs), network\n"
    "evaluations per step, default steps, whether it integrates an ODE or an SDE,\n"
    "and which model families it applies to.";

int cmd_samplers(int argc, char **argv)
{
    int rc = cli_options("samplers", "difflux samplers", about, argc, argv, NULL, 0);
    if (rc != CLI_GO) return rc;
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
    return CLI_OK;
}
