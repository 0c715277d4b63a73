/* Butcher tableaus of the explicit Runge-Kutta rules, shared by the ODE
 * samplers (samplers_ode.c) and the likelihood's integrators
 * (analysis/likelihood.c). */
#ifndef DFX_TABLEAU_H
#define DFX_TABLEAU_H

typedef struct dfx_rk_tableau {
    int stages;
    double c[7];
    double a[7][7];
    double b[7];
} dfx_rk_tableau;

extern const dfx_rk_tableau dfx_euler_tab, dfx_heun_tab, dfx_rk4_tab;

/* Dormand & Prince (1980) 5(4) with FSAL: the 5th-order solution (weights
 * dfx_dp_a[6]) advances, the embedded 4th-order one estimates the error;
 * dfx_dp_e = b - b*. */
extern const double dfx_dp_c[7];
extern const double dfx_dp_a[7][6];
extern const double dfx_dp_e[7];

#endif
