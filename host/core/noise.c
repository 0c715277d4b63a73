/* Host entry points to the Philox generator shared by every backend. */
#include "difflux.h"
#include "core/philox.h"

void dfx_philox4x32(const uint32_t ctr[4], const uint32_t key[2], uint32_t out[4])
{
    dfx_philox4x32_10(ctr, key, out);
}

void dfx_normal_host(uint64_t seed, uint64_t first_index, int rows, size_t cols, uint32_t draw,
                     uint32_t stream, float *out)
{
    for (int r = 0; r < rows; r++)
        dfx_philox_normal_row(seed, first_index + (uint64_t)r, draw, stream, cols,
                              out + (size_t)r * cols);
}
