/*
 * Standard normal noise: the counter-based Philox generator that the CPU
 * runs too (host/core/philox.h is __host__ __device__), one thread per
 * group of four values.
 *
 * CPU reference: host/cpu/backend_cpu.c (cpu_normal, through
 * dfx_philox_normal_row of host/core/philox.h).
 */
#pragma once

#include "common.cuh"

/* --------------------------------------------------------------- normal */

/* One thread per group of 4 values of a row: the very Philox call the CPU
 * makes (dfx_philox_normal_row loops over the same groups). */
static __global__ void k_normal(float *out, uint64_t seed, uint64_t first_index, int rows, size_t cols,
                         uint32_t draw, uint32_t stream)
{
    const size_t groups = (cols + 3) / 4;
    for (int r = blockIdx.y; r < rows; r += gridDim.y) {
        float *o = out + (size_t)r * cols;
        for (size_t g = (size_t)blockIdx.x * blockDim.x + threadIdx.x; g < groups;
             g += (size_t)gridDim.x * blockDim.x) {
            float z[4];
            dfx_philox_normal4(seed, (uint32_t)g, draw, first_index + (uint64_t)r, stream, z);
            for (size_t j = 0; j < 4 && g * 4 + j < cols; j++) o[g * 4 + j] = z[j];
        }
    }
}

/* CPU twin: cpu_normal. */
static void cu_normal(dfx_backend *be, float *out, uint64_t seed, uint64_t first_index,
                      int rows, size_t cols, uint32_t draw, uint32_t stream)
{
    cu_impl *cu = impl_of(be);
    if (rows <= 0 || cols == 0 || cu_dry(cu)) return;
    k_normal<<<rows_grid(rows, (cols + 3) / 4), DFX_CUDA_BLOCK, 0, cu->stream>>>(
        out, seed, first_index, rows, cols, draw, stream);
    CU_LAUNCH_RECORD(cu, "normal", k_normal, out, (size_t)rows * cols);
}
