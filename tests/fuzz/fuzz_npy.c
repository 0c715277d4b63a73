/* The .npy reader (dfx_read_npy) on any bytes, for rows of 1, 4 and 784
 * values. */
#include "fuzz.h"

#include "difflux.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *path = fuzz_as_file(data, size);
    const size_t rows[3] = {1, 4, 784};
    for (int i = 0; i < 3; i++) {
        dfx_error err = {{0}};
        long n = -1;
        float *x = dfx_read_npy(path, rows[i], &n, &err);
        if (x) {
            volatile float sink = x[(size_t)n * rows[i] - 1]; /* the last value is there */
            (void)sink;
            free(x);
        } else if (!err.msg[0]) {
            abort();
        }
    }
    return 0;
}
