/* IDX files (the MNIST format), plain or gzip-compressed, through zlib. */
#include "core/error.h"
#include "io/fileio.h"
#include "io/safetensors.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
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
    *out = NULL;
    int fd = dfx_open_regular(file, "IDX file", NULL, err);
    if (fd < 0) return -1;
    gzFile g = gzdopen(fd, "rb");
    if (!g) {
        close(fd);
        return dfx_fail(err, "%s: cannot read: out of memory", file);
    }
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
        /* three dimensions of up to 2^24 overflow 64 bits: check each product */
        if (total > ((size_t)1 << 32) / dims[i]) {
            dfx_fail(err, "%s: IDX data too large (more than 2^32 bytes)", file);
            goto done;
        }
        total *= dims[i];
    }
    /* The buffer grows with the data that actually arrives, so a header
     * that claims gigabytes costs only what the file holds. */
    size_t got = 0, cap = 0;
    uint8_t *buf = NULL;
    while (got < total) {
        if (got == cap) {
            size_t nc = cap ? 2 * cap : ((size_t)1 << 16);
            if (nc > total) nc = total;
            uint8_t *nb = realloc(buf, nc);
            if (!nb) {
                free(buf);
                dfx_fail(err, "%s: out of memory", file);
                goto done;
            }
            buf = nb;
            cap = nc;
        }
        size_t want = cap - got < (1u << 30) ? cap - got : (1u << 30);
        int r = gzread(g, buf + got, (unsigned)want);
        if (r <= 0) break;
        got += (size_t)r;
    }
    if (got != total) {
        free(buf);
        dfx_fail(err, "%s: truncated IDX file (%zu of %zu bytes)", file, got, total);
        goto done;
    }
    *out = buf;
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
