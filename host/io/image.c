/* Output: PNG image grids (stb_image_write) and float32 .npy arrays, both
 * written to a temporary name and renamed. */
#include "core/error.h"
#include "io/fileio.h"
#include "io/safetensors.h"

#include <limits.h>
#include <math.h>
#include <stb_image_write.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void png_sink(void *ctx, void *data, int size)
{
    fwrite(data, 1, (size_t)size, (FILE *)ctx);
}

static unsigned char to_byte(double v)
{
    if (!(v > 0.0)) return 0; /* NaN maps to black too */
    if (v >= 1.0) return 255;
    return (unsigned char)lround(v * 255.0);
}

/* The grid's size in pixels; -1 with a message when it cannot be written. */
static int grid_size(const char *file, int n, int channels, int height, int width,
                     dfx_grid_layout *L, long *W, long *H, dfx_error *err)
{
    if (n < 1) return dfx_fail(err, "%s: no images to write", file);
    if (channels != 1 && channels != 3 && channels != 4)
        return dfx_fail(err,
                        "%s: a PNG grid needs 1, 3 or 4 channels, the model has %d (write raw "
                        "samples with --npy FILE --no-png instead)",
                        file, channels);
    if (L->pad < 0 || L->pad > 1000)
        return dfx_fail(err, "--pad must be in [0, 1000] (got %d)", L->pad);
    if (L->scale < 1 || L->scale > 64)
        return dfx_fail(err, "--scale must be in [1, 64] (got %d)", L->scale);
    if (L->cols < 0) return dfx_fail(err, "--cols must be >= 0 (got %d)", L->cols);
    if (L->cols == 0) L->cols = (int)ceil(sqrt((double)n) - 1e-9);
    if (L->cols > n) L->cols = n;
    int rows = (n + L->cols - 1) / L->cols;
    long tw = (long)width * L->scale, th = (long)height * L->scale;
    *W = L->cols * (tw + L->pad) + L->pad;
    *H = rows * (th + L->pad) + L->pad;
    if (*W > 65535 || *H > 65535 || *W * *H > (1L << 28))
        return dfx_fail(err,
                        "%s: a grid of %ld x %ld pixels is too large (at most 65535 a side and "
                        "2^28 pixels; fewer --cols, a smaller --scale or --pad, or fewer samples)",
                        file, *W, *H);
    return 0;
}

int dfx_png_grid_check(const char *file, int n, int channels, int height, int width,
                       const dfx_grid_layout *layout, dfx_error *err)
{
    dfx_grid_layout L = {0, 2, 1.0, 1};
    if (layout) L = *layout;
    long W = 0, H = 0;
    return grid_size(file, n, channels, height, width, &L, &W, &H, err);
}

int dfx_write_png_grid(const char *file, const float *images, int n, int channels, int height,
                       int width, double lo, double hi, const dfx_grid_layout *layout,
                       dfx_error *err)
{
    dfx_grid_layout L = {0, 2, 1.0, 1};
    if (layout) L = *layout;
    long W = 0, H = 0;
    if (grid_size(file, n, channels, height, width, &L, &W, &H, err)) return -1;
    if (!(hi > lo)) return dfx_fail(err, "%s: empty data range [%g, %g]", file, lo, hi);
    long tw = (long)width * L.scale, th = (long)height * L.scale;
    unsigned char *px = malloc((size_t)(W * H * channels));
    if (!px) return dfx_fail(err, "%s: out of memory for a %ld x %ld image", file, W, H);
    memset(px, to_byte(L.pad_value), (size_t)(W * H * channels));
    const size_t plane = (size_t)height * (size_t)width;
    for (int i = 0; i < n; i++) {
        long x0 = L.pad + (i % L.cols) * (tw + L.pad), y0 = L.pad + (i / L.cols) * (th + L.pad);
        const float *img = images + (size_t)i * channels * plane;
        for (long y = 0; y < th; y++)
            for (long x = 0; x < tw; x++)
                for (int c = 0; c < channels; c++) {
                    float v = img[c * plane + (size_t)(y / L.scale) * width + (x / L.scale)];
                    px[((y0 + y) * W + (x0 + x)) * channels + c] = to_byte((v - lo) / (hi - lo));
                }
    }
    dfx_atomic a;
    int rc = dfx_atomic_open(&a, file, err);
    if (rc == 0) {
        if (!stbi_write_png_to_func(png_sink, a.fp, (int)W, (int)H, channels, px,
                                    (int)(W * channels))) {
            dfx_atomic_abort(&a);
            rc = dfx_fail(err, "%s: PNG encoding failed", file);
        } else {
            rc = dfx_atomic_commit(&a, err);
        }
    }
    free(px);
    return rc;
}

int dfx_write_npy(const char *file, const float *data, int ndim, const int64_t *shape,
                  dfx_error *err)
{
    char hdr[256];
    int o = snprintf(hdr, sizeof hdr, "{'descr': '<f4', 'fortran_order': False, 'shape': (");
    size_t numel = 1;
    for (int i = 0; i < ndim; i++) {
        o += snprintf(hdr + o, sizeof hdr - (size_t)o, "%lld%s", (long long)shape[i],
                      ndim == 1 ? "," : (i + 1 < ndim ? ", " : ""));
        numel *= (size_t)shape[i];
    }
    o += snprintf(hdr + o, sizeof hdr - (size_t)o, "), }");
    /* magic (6) + version (2) + header length (2) + header, padded with
     * spaces to a multiple of 64 and ended by a newline */
    int total = 10 + o + 1;
    int pad = (64 - total % 64) % 64;
    dfx_atomic a;
    if (dfx_atomic_open(&a, file, err)) return -1;
    unsigned short len = (unsigned short)(o + pad + 1);
    fwrite("\x93NUMPY\x01\x00", 1, 8, a.fp);
    unsigned char l2[2] = {(unsigned char)(len & 0xff), (unsigned char)(len >> 8)};
    fwrite(l2, 1, 2, a.fp);
    fwrite(hdr, 1, (size_t)o, a.fp);
    for (int i = 0; i < pad; i++) fputc(' ', a.fp);
    fputc('\n', a.fp);
    for (size_t i = 0; i < numel; i++) {
        uint32_t u;
        memcpy(&u, &data[i], 4);
        unsigned char b[4] = {(unsigned char)u, (unsigned char)(u >> 8),
                              (unsigned char)(u >> 16), (unsigned char)(u >> 24)};
        fwrite(b, 1, 4, a.fp);
    }
    return dfx_atomic_commit(&a, err);
}

/* n bytes from fd, or -1 when the file ends (or fails) first. */
static int read_full(int fd, void *buf, size_t n)
{
    for (size_t got = 0; got < n;) {
        ssize_t r = read(fd, (char *)buf + got, n - got);
        if (r <= 0) return -1;
        got += (size_t)r;
    }
    return 0;
}

float *dfx_read_npy(const char *file, size_t row, long *n, dfx_error *err)
{
    size_t fsize = 0;
    int fd = dfx_open_regular(file, NULL, &fsize, err);
    if (fd < 0) return NULL;
    unsigned char pre[10];
    float *x = NULL;
    char *hdr = NULL;
    if (read_full(fd, pre, 10) != 0 || memcmp(pre, "\x93NUMPY", 6) != 0) {
        dfx_fail(err, "%s: not a .npy file", file);
        goto done;
    }
    size_t hl = pre[8] | (size_t)pre[9] << 8, start = 10;
    if (pre[6] != 1) {
        unsigned char more[2];
        if (pre[6] > 3 || read_full(fd, more, 2) != 0) {
            dfx_fail(err, "%s: unsupported .npy version %d", file, pre[6]);
            goto done;
        }
        hl |= (size_t)more[0] << 16 | (size_t)more[1] << 24;
        start = 12;
    }
    if (hl > (1u << 20) || !(hdr = calloc(hl + 1, 1)) || read_full(fd, hdr, hl) != 0) {
        dfx_fail(err, "%s: bad .npy header", file);
        goto done;
    }
    if (!strstr(hdr, "'descr': '<f4'") || !strstr(hdr, "'fortran_order': False")) {
        dfx_fail(err, "%s: expected little-endian float32 in C order (as difflux sample --npy "
                      "writes)",
                 file);
        goto done;
    }
    const char *sh = strstr(hdr, "'shape': (");
    if (!sh) {
        dfx_fail(err, "%s: .npy header has no shape", file);
        goto done;
    }
    sh += 10;
    /* a tuple of non-negative integers: "(3, 1, 28, 28)", "(5,)" */
    double total = 1.0, first = -1;
    for (;;) {
        while (*sh == ' ') sh++;
        if (*sh == ')') break;
        char *end;
        long v = *sh >= '0' && *sh <= '9' ? strtol(sh, &end, 10) : -1;
        if (v < 0 || v == LONG_MAX) {
            dfx_fail(err, "%s: .npy shape is not a tuple of sizes", file);
            goto done;
        }
        if (first < 0) first = (double)v;
        total *= (double)v;
        sh = end;
        while (*sh == ' ') sh++;
        if (*sh == ',') sh++;
        else if (*sh != ')') {
            dfx_fail(err, "%s: .npy shape is not a tuple of sizes", file);
            goto done;
        }
    }
    if (first < 1 || total != first * (double)row) {
        dfx_fail(err, "%s: shape does not hold rows of %zu values (the model's C x H x W)", file,
                 row);
        goto done;
    }
    /* the size the shape implies, before allocating for it */
    size_t have = fsize > start + hl ? fsize - start - hl : 0;
    if (total * 4.0 != (double)have) {
        dfx_fail(err, "%s: file is %s than its shape (%zu bytes of data, the shape needs %.0f)",
                 file, (double)have < total * 4.0 ? "shorter" : "longer", have, total * 4.0);
        goto done;
    }
    *n = (long)first;
    x = malloc((size_t)total * sizeof(float) + 1);
    if (!x) {
        dfx_fail(err, "%s: out of memory for %.0f values", file, total);
        goto done;
    }
    if (read_full(fd, x, (size_t)total * sizeof(float)) != 0) {
        dfx_fail(err, "%s: file is shorter than its shape", file);
        free(x);
        x = NULL;
        goto done;
    }
    for (size_t i = 0; i < (size_t)total; i++) { /* little-endian, as written */
        unsigned char b[4];
        memcpy(b, &x[i], 4);
        uint32_t u = (uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 |
                     (uint32_t)b[3] << 24;
        memcpy(&x[i], &u, 4);
    }
done:
    free(hdr);
    close(fd);
    return x;
}
