/*
 * Line plots as PNG files, drawn by PLplot's cairo driver (Debian
 * libplplot-dev, plplot-driver-cairo). Panels in a grid, each with lines,
 * optional error bars, log axes and a legend. Without PLplot in the build,
 * dfx_plot_png says so and fails cleanly.
 */
#define _POSIX_C_SOURCE 200809L
#include "core/error.h"
#include "difflux.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int dfx_have_plots(void)
{
#ifdef DFX_HAVE_PLPLOT
    return 1;
#else
    return 0;
#endif
}

#ifndef DFX_HAVE_PLPLOT

int dfx_plot_png(const char *file, int ncols, int npanels, const dfx_plot_panel *panels,
                 int width, int height, dfx_error *err)
{
    (void)ncols;
    (void)npanels;
    (void)panels;
    (void)width;
    (void)height;
    return dfx_fail(err,
                    "%s: this build of difflux has no plotting (install libplplot-dev and "
                    "plplot-driver-cairo, then reconfigure)",
                    file);
}

#else

#include <plplot.h>
#include <unistd.h>

/* Colour-blind-safe palette (Okabe-Ito); 0 is the background, 1 the axes. */
static const unsigned char palette[][3] = {
    {255, 255, 255}, {0, 0, 0},     {0, 114, 178},  {230, 159, 0},  {0, 158, 115},
    {213, 94, 0},    {204, 121, 167}, {86, 180, 233}, {240, 228, 66}, {120, 120, 120},
};
#define NPAL ((int)(sizeof palette / sizeof palette[0]))

static int have_device(const char *name)
{
    /* plgDevs fills caller-owned arrays of *n entries with static strings */
    const char *menu_s[128], *devs_s[128];
    const char **menu = menu_s, **devs = devs_s;
    int n = 128;
    plgDevs(&menu, &devs, &n);
    for (int i = 0; i < n && i < 128; i++)
        if (devs[i] && strcmp(devs[i], name) == 0) return 1;
    return 0;
}

static double tr(double v, int logscale)
{
    return logscale ? log10(v) : v;
}

/* Data range of a panel on its (possibly log) axes; 0 if nothing to draw. */
static int panel_range(const dfx_plot_panel *p, double *x0, double *x1, double *y0, double *y1)
{
    int any = 0;
    *x0 = *y0 = INFINITY;
    *x1 = *y1 = -INFINITY;
    for (int s = 0; s < p->nseries; s++) {
        const dfx_plot_series *se = &p->series[s];
        for (int i = 0; i < se->n; i++) {
            double x = se->x[i], y = se->y[i];
            if (!isfinite(x) || (p->logx && x <= 0)) continue;
            /* every valid x sets the x range, plottable or not in y */
            if (tr(x, p->logx) < *x0) *x0 = tr(x, p->logx);
            if (tr(x, p->logx) > *x1) *x1 = tr(x, p->logx);
            if (!isfinite(y) || (p->logy && y <= 0)) continue;
            double lo = y, hi = y;
            if (se->err && isfinite(se->err[i])) {
                hi = y + se->err[i];
                if (!p->logy || y - se->err[i] > 0) lo = y - se->err[i];
            }
            x = tr(x, p->logx);
            lo = tr(lo, p->logy);
            hi = tr(hi, p->logy);
            if (x < *x0) *x0 = x;
            if (x > *x1) *x1 = x;
            if (lo < *y0) *y0 = lo;
            if (hi > *y1) *y1 = hi;
            any = 1;
        }
    }
    if (!any) return 0;
    double dx = *x1 - *x0, dy = *y1 - *y0;
    if (dx <= 0) dx = fabs(*x0) > 0 ? 0.1 * fabs(*x0) : 1;
    if (dy <= 0) dy = fabs(*y0) > 0 ? 0.1 * fabs(*y0) : 1;
    *x0 -= 0.04 * dx;
    *x1 += 0.04 * dx;
    if (p->logy) { /* whole decades, so the axis has labelled ticks */
        *y0 = floor(*y0);
        *y1 = ceil(*y1);
        if (*y1 <= *y0) *y1 = *y0 + 1;
    } else {
        *y0 -= 0.06 * dy;
        *y1 += 0.06 * dy;
    }
    return 1;
}

/* Labels of a log axis drawn as a linear axis of log10 values: 10^k. */
static void log_label(PLINT axis, PLFLT value, char *label, PLINT length, PLPointer data)
{
    (void)axis;
    (void)data;
    snprintf(label, (size_t)length, "10#u%d#d", (int)lround(value));
}

static void draw_panel(const dfx_plot_panel *p)
{
    pladv(0);
    /* the legend goes above the axes, so it never hides a curve */
    int nleg = 0;
    for (int si = 0; si < p->nseries; si++) nleg += p->series[si].label != NULL;
    const int legrows = (nleg + 1) / 2;
    double top = 0.86 - 0.045 * legrows;
    if (top < 0.45) top = 0.45;
    plvpor(0.14, 0.95, 0.14, top);
    double x0, x1, y0, y1;
    int any = panel_range(p, &x0, &x1, &y0, &y1);
    if (!any) x0 = 0, x1 = 1, y0 = 0, y1 = 1;
    plwind(x0, x1, y0, y1);
    plcol0(1);
    plwidth(1.0);
    pllsty(1);
    plschr(0, 0.9);
    /* on a log axis, at most about 8 labelled decades */
    double ytick = 0;
    int nysub = 0;
    if (p->logy) { /* whole decades, at most about 8 labelled */
        ytick = y1 - y0 > 8 ? ceil((y1 - y0) / 8) : 1;
        nysub = 1;
    }
    if (p->logy) plslabelfunc(log_label, NULL);
    plbox(p->logx ? "bcnstl" : "bcnst", 0, 0, p->logy ? "bcnstvo" : "bcnstv", ytick, nysub);
    if (p->logy) plslabelfunc(NULL, NULL);
    pllab(p->xlabel ? p->xlabel : "", p->ylabel ? p->ylabel : "", "");
    if (p->title) plmtex("t", 1.5 + 1.9 * legrows + (legrows ? 1.0 : 0.0), 0.5, 0.5, p->title);
    if (!any) {
        plptex(0.5, 0.5, 1, 0, 0.5, "no finite values");
        return;
    }
    int nl = 0;
    int opts[16], colors[16], styles[16], syms[16], symcol[16];
    double widths[16], symscale[16];
    const char *text[16], *symbols[16];
    for (int s = 0; s < p->nseries; s++) {
        const dfx_plot_series *se = &p->series[s];
        int col = 2 + (se->color >= 0 ? se->color : s) % (NPAL - 2);
        double *xs = malloc((size_t)(se->n > 0 ? se->n : 1) * 3 * sizeof(double));
        if (!xs) continue;
        double *ys = xs + se->n, *ye = ys + se->n;
        int k = 0;
        for (int i = 0; i < se->n; i++) {
            if (!isfinite(se->x[i]) || !isfinite(se->y[i]) || (p->logx && se->x[i] <= 0) ||
                (p->logy && se->y[i] <= 0))
                continue;
            xs[k] = tr(se->x[i], p->logx);
            ys[k] = tr(se->y[i], p->logy);
            k++;
        }
        plcol0(col);
        plwidth(2.0);
        pllsty(se->dashed ? 2 : 1);
        if (k > 1) plline(k, xs, ys);
        pllsty(1);
        if (k > 0) plstring(k, xs, ys, se->dashed ? "#(225)" : "#(228)");
        if (se->err) { /* vertical bars: y +- err */
            int kb = 0;
            for (int i = 0; i < se->n; i++) {
                double y = se->y[i], e = se->err[i];
                if (!isfinite(se->x[i]) || !isfinite(y) || !isfinite(e) ||
                    (p->logx && se->x[i] <= 0) || (p->logy && y <= 0))
                    continue;
                double lo = y - e, hi = y + e;
                if (p->logy && lo <= 0) lo = y / 10; /* clip below on log axes */
                xs[kb] = tr(se->x[i], p->logx);
                ys[kb] = tr(lo, p->logy);
                ye[kb] = tr(hi, p->logy);
                kb++;
            }
            plwidth(1.0);
            if (kb > 0) plerry(kb, xs, ys, ye);
        }
        free(xs);
        if (se->label && nl < 16) {
            opts[nl] = PL_LEGEND_LINE | PL_LEGEND_SYMBOL;
            colors[nl] = col;
            styles[nl] = se->dashed ? 2 : 1;
            widths[nl] = 2.0;
            syms[nl] = 1;
            symcol[nl] = col;
            symscale[nl] = 1.0;
            symbols[nl] = se->dashed ? "#(225)" : "#(228)";
            text[nl] = se->label;
            nl++;
        }
    }
    if (nl > 0) {
        double lw, lh;
        int tcol[16];
        for (int i = 0; i < nl; i++) tcol[i] = 1;
        plschr(0, 0.75);
        pllegend(&lw, &lh, 0, PL_POSITION_OUTSIDE | PL_POSITION_TOP, 0.0, 0.03, 0.06, 0, 1, 1,
                 (nl + 1) / 2, nl > 1 ? 2 : 1, nl, opts, 0.6, 0.75, 1.6, 0.0, tcol, text, NULL,
                 NULL, NULL, NULL, colors, styles, widths, symcol, symscale, syms, symbols);
        plschr(0, 0.9);
    }
}

int dfx_plot_png(const char *file, int ncols, int npanels, const dfx_plot_panel *panels,
                 int width, int height, dfx_error *err)
{
    if (npanels < 1) return dfx_fail(err, "%s: nothing to plot", file);
    if (!have_device("pngcairo"))
        return dfx_fail(err,
                        "%s: PLplot has no pngcairo device (apt-get install "
                        "plplot-driver-cairo)",
                        file);
    if (ncols < 1) ncols = 1;
    if (ncols > npanels) ncols = npanels;
    const int nrows = (npanels + ncols - 1) / ncols;
    char tmp[4096];
    if (snprintf(tmp, sizeof tmp, "%s.tmp%ld", file, (long)getpid()) >= (int)sizeof tmp)
        return dfx_fail(err, "%s: file name too long", file);
    FILE *probe = fopen(tmp, "wb"); /* PLplot would exit on an unwritable file */
    if (!probe) return dfx_fail(err, "%s: cannot write: %s", file, strerror(errno));
    fclose(probe);
    plsdev("pngcairo");
    plsfnam(tmp);
    plspage(0, 0, width, height, 0, 0);
    plscmap0n(NPAL);
    for (int i = 0; i < NPAL; i++) plscol0(i, palette[i][0], palette[i][1], palette[i][2]);
    plssub(ncols, nrows);
    plinit();
    for (int i = 0; i < npanels; i++) draw_panel(&panels[i]);
    plend();
    if (rename(tmp, file) != 0) {
        int e = errno;
        remove(tmp);
        return dfx_fail(err, "%s: cannot rename the plot into place: %s", file, strerror(e));
    }
    return 0;
}

#endif
