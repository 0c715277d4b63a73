/* The IDX readers (images and labels, plain or gzip through zlib) on any
 * bytes. */
#include "fuzz.h"

#include "difflux.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *path = fuzz_as_file(data, size);
    dfx_error err = {{0}};
    uint8_t *px = NULL;
    int n = 0, h = 0, w = 0;
    if (dfx_read_idx_images(path, &px, &n, &h, &w, &err) == 0) {
        volatile uint8_t sink = px[(size_t)n * h * w - 1]; /* the last pixel is there */
        (void)sink;
        free(px);
    } else if (!err.msg[0]) {
        abort();
    }
    err.msg[0] = 0;
    uint8_t *lab = NULL;
    if (dfx_read_idx_labels(path, &lab, &n, &err) == 0) {
        volatile uint8_t sink = lab[n - 1];
        (void)sink;
        free(lab);
    } else if (!err.msg[0]) {
        abort();
    }
    return 0;
}
