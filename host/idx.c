/* IDX files (the MNIST format), plain or gzip-compressed, through zlib. */
#include "error.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

static int read_u32(gzFile g, uint32_t *v)
{
    unsigned char b[4];
    if (gzread(g, b, 4) != 4) return -1;
    *v = (uint32_t)b[0] << 24 | (uint32_t)b[1] << 16 | (uint32_t)b[2] << 8 | b[3];
    return 0;
}

static int read_idx(const char *file, uint32_t magic, int ndim, uint32_t *dims,
                    uint8_t **out, dfx_error *err)
{
    gzFile g = gzopen(file, "rb");
    if (!g) return dfx_fail(err, "cannot open '%s': %s", file, strerror(errno));
    uint32_t mg = 0;
    int rc = -1;
    size_t total = 1;
    if (read_u32(g, &mg) || mg != magic) {
        dfx_fail(err, "%s: not an IDX file of the expected kind (magic %u, expected %u)", file,
                 mg, magic);
        goto done;
    }
    for (int i = 0; i < ndim; i++) {
        if (read_u32(g, &dims[i]) || dims[i] == 0 || dims[i] > (1u << 24)) {
            dfx_fail(err, "%s: bad dimension %d in the IDX header", file, i);
            goto done;
        }
        total *= dims[i];
    }
    if (total > ((size_t)1 << 32)) {
        dfx_fail(err, "%s: IDX data too large", file);
        goto done;
    }
    *out = malloc(total);
    if (!*out) {
        dfx_fail(err, "%s: out of memory", file);
        goto done;
    }
    size_t got = 0;
    while (got < total) {
        unsigned chunk = (unsigned)((total - got) > (1u << 30) ? (1u << 30) : (total - got));
        int r = gzread(g, *out + got, chunk);
        if (r <= 0) break;
        got += (size_t)r;
    }
    if (got != total) {
        free(*out);
        *out = NULL;
        dfx_fail(err, "%s: truncated IDX file (%zu of %zu bytes)", file, got, total);
        goto done;
    }
    rc = 0;
done:
    gzclose(g);
    return rc;
}

int dfx_read_idx_images(const char *file, uint8_t **pixels, int *n, int *h, int *w,
                        dfx_error *err)
{
    uint32_t d[3] = {0, 0, 0};
    if (read_idx(file, 2051, 3, d, pixels, err)) return -1;
    *n = (int)d[0];
    *h = (int)d[1];
    *w = (int)d[2];
    return 0;
}

int dfx_read_idx_labels(const char *file, uint8_t **labels, int *n, dfx_error *err)
{
    uint32_t d[1] = {0};
    if (read_idx(file, 2049, 1, d, labels, err)) return -1;
    *n = (int)d[0];
    return 0;
}
