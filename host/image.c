/* Output: PNG image grids (stb_image_write) and float32 .npy arrays, both
 * written to a temporary name and renamed. */
#include "error.h"
#include "fileio.h"

#include <math.h>
#include <stb_image_write.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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

int dfx_write_png_grid(const char *file, const float *images, int n, int channels, int height,
                       int width, double lo, double hi, const dfx_grid_layout *layout,
                       dfx_error *err)
{
    dfx_grid_layout L = {0, 2, 1.0, 1};
    if (layout) L = *layout;
    if (n < 1) return dfx_fail(err, "%s: no images to write", file);
    if (channels != 1 && channels != 3)
        return dfx_fail(err, "%s: PNG grids need 1 or 3 channels (the model has %d)", file,
                        channels);
    if (!(hi > lo)) return dfx_fail(err, "%s: empty data range [%g, %g]", file, lo, hi);
    if (L.cols <= 0) L.cols = (int)ceil(sqrt((double)n) - 1e-9);
    if (L.cols > n) L.cols = n;
    if (L.pad < 0 || L.pad > 1000) return dfx_fail(err, "padding must be in [0, 1000]");
    if (L.scale < 1 || L.scale > 64) return dfx_fail(err, "scale must be in [1, 64]");
    int rows = (n + L.cols - 1) / L.cols;
    long tw = (long)width * L.scale, th = (long)height * L.scale;
    long W = L.cols * (tw + L.pad) + L.pad, H = rows * (th + L.pad) + L.pad;
    if (W > 65535 || H > 65535 || W * H > (1L << 28))
        return dfx_fail(err, "%s: grid of %ld x %ld pixels is too large", file, W, H);
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

float *dfx_read_npy(const char *file, size_t row, long *n, dfx_error *err)
{
    FILE *f = fopen(file, "rb");
    if (!f) return dfx_fail(err, "%s: cannot open", file), NULL;
    unsigned char pre[10];
    float *x = NULL;
    char *hdr = NULL;
    if (fread(pre, 1, 10, f) != 10 || memcmp(pre, "\x93NUMPY", 6) != 0) {
        dfx_fail(err, "%s: not a .npy file", file);
        goto done;
    }
    size_t hl = pre[8] | (size_t)pre[9] << 8;
    if (pre[6] != 1) {
        unsigned char more[2];
        if (pre[6] > 3 || fread(more, 1, 2, f) != 2) {
            dfx_fail(err, "%s: unsupported .npy version %d", file, pre[6]);
            goto done;
        }
        hl |= (size_t)more[0] << 16 | (size_t)more[1] << 24;
    }
    if (hl > (1u << 20) || !(hdr = calloc(hl + 1, 1)) || fread(hdr, 1, hl, f) != hl) {
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
    double total = 1.0, first = -1;
    while (*sh && *sh != ')') {
        char *end;
        long v = strtol(sh, &end, 10);
        if (end == sh || v < 0) break;
        if (first < 0) first = (double)v;
        total *= (double)v;
        sh = end;
        while (*sh == ',' || *sh == ' ') sh++;
    }
    if (first < 1 || total != first * (double)row) {
        dfx_fail(err, "%s: shape does not hold rows of %zu values (the model's C x H x W)", file,
                 row);
        goto done;
    }
    *n = (long)first;
    x = malloc((size_t)total * sizeof(float));
    if (!x) {
        dfx_fail(err, "%s: out of memory for %.0f values", file, total);
        goto done;
    }
    for (size_t i = 0; i < (size_t)total; i++) { /* little-endian, as written */
        unsigned char b[4];
        if (fread(b, 1, 4, f) != 4) {
            dfx_fail(err, "%s: file is shorter than its shape", file);
            free(x);
            x = NULL;
            break;
        }
        uint32_t u = (uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 |
                     (uint32_t)b[3] << 24;
        memcpy(&x[i], &u, 4);
    }
done:
    free(hdr);
    fclose(f);
    return x;
}
