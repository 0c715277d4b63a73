/* The .npy and IDX readers on malformed input (issue #17): a header that
 * claims more than the file holds is refused before anything is allocated
 * for it, IDX dimensions whose product overflows are refused, and valid
 * files (IDX plain and gzip) read back exactly. */
#include "check.h"
#include "difflux.h"

#include <stdint.h>
#include <stdlib.h>
#include <unistd.h>
#include <zlib.h>

static char dir[] = "/tmp/difflux-test-readers-XXXXXX";
static char path[256];

static void put(const void *b, size_t n)
{
    FILE *f = fopen(path, "wb");
    fwrite(b, 1, n, f);
    fclose(f);
}

static void be32(unsigned char *p, uint32_t v)
{
    p[0] = (unsigned char)(v >> 24), p[1] = (unsigned char)(v >> 16);
    p[2] = (unsigned char)(v >> 8), p[3] = (unsigned char)v;
}

/* A .npy v1 file with header dict `dict` and n bytes of data. */
static void put_npy(const char *dict, size_t n)
{
    unsigned char b[4096] = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0};
    size_t hl = strlen(dict);
    b[8] = (unsigned char)hl;
    b[9] = (unsigned char)(hl >> 8);
    memcpy(b + 10, dict, hl);
    for (size_t i = 0; i < n; i++) b[10 + hl + i] = (unsigned char)i;
    put(b, 10 + hl + n);
}

static void npy_expect_fail(const char *what, const char *want)
{
    dfx_error err = {{0}};
    long n = 0;
    float *x = dfx_read_npy(path, 4, &n, &err);
    CHECK(x == NULL, "%s: read a malformed .npy", what);
    CHECK(strstr(err.msg, want) != NULL, "%s: message '%s' lacks '%s'", what, err.msg, want);
    free(x);
}

static void npy(void)
{
    const char *good = "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 4), }\n";
    put_npy(good, 32);
    dfx_error err = {{0}};
    long n = 0;
    float *x = dfx_read_npy(path, 4, &n, &err);
    CHECK(x != NULL && n == 2, "good .npy: %s", err.msg);
    free(x);
    /* claims 4e12 values in a 32-byte file: refused before a 16 TB malloc */
    put_npy("{'descr': '<f4', 'fortran_order': False, 'shape': (1000000000000, 4), }\n", 32);
    npy_expect_fail("huge shape", "shorter than its shape");
    put_npy(good, 36);
    npy_expect_fail("trailing data", "longer than its shape");
    put_npy("{'descr': '<f4', 'fortran_order': False, 'shape': (2, -4), }\n", 32);
    npy_expect_fail("negative size", "not a tuple of sizes");
    put_npy("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 4 x), }\n", 32);
    npy_expect_fail("junk in the shape", "not a tuple of sizes");
    put_npy("{'descr': '<f4', 'fortran_order': False, 'shape': (99999999999999999999999, 4), }\n",
            32);
    npy_expect_fail("size beyond long", "not a tuple of sizes");
}

static int idx_read(uint8_t **px, int *n, int *h, int *w, dfx_error *err)
{
    *px = NULL;
    return dfx_read_idx_images(path, px, n, h, w, err);
}

static void idx(void)
{
    unsigned char b[16 + 12];
    be32(b, 2051);
    be32(b + 4, 3), be32(b + 8, 2), be32(b + 12, 2);
    for (int i = 0; i < 12; i++) b[16 + i] = (unsigned char)(7 * i);
    put(b, sizeof b);
    dfx_error err = {{0}};
    uint8_t *px;
    int n, h, w;
    CHECK(idx_read(&px, &n, &h, &w, &err) == 0 && n == 3 && h == 2 && w == 2 &&
              px[11] == 77,
          "plain IDX: %s", err.msg);
    free(px);
    gzFile g = gzopen(path, "wb");
    gzwrite(g, b, sizeof b);
    gzclose(g);
    CHECK(idx_read(&px, &n, &h, &w, &err) == 0 && n == 3 && px[5] == 35, "gzip IDX: %s",
          err.msg);
    free(px);
    /* 2^24 x 2^24 x 2^24 bytes wrap a 64-bit product to 0: it was "read"
     * as an empty buffer of 2^72 pixels */
    be32(b + 4, 1u << 24), be32(b + 8, 1u << 24), be32(b + 12, 1u << 24);
    put(b, 16);
    err.msg[0] = 0;
    CHECK(idx_read(&px, &n, &h, &w, &err) != 0 && strstr(err.msg, "too large"),
          "overflowing dimensions: %s", err.msg);
    free(px);
    /* claims 2^32 bytes, holds 12: refused, having allocated only a little */
    be32(b + 4, 1u << 24), be32(b + 8, 16), be32(b + 12, 16);
    put(b, sizeof b);
    CHECK(idx_read(&px, &n, &h, &w, &err) != 0 && strstr(err.msg, "truncated IDX file (12 of"),
          "short IDX: %s", err.msg);
    free(px);
    unsigned char l[8 + 3] = {0, 0, 8, 1, 0, 0, 0, 3, 1, 2, 3};
    put(l, sizeof l);
    uint8_t *lab = NULL;
    CHECK(dfx_read_idx_labels(path, &lab, &n, &err) == 0 && n == 3 && lab[2] == 3,
          "labels: %s", err.msg);
    free(lab);
}

int main(void)
{
    CHECK(mkdtemp(dir) != NULL, "mkdtemp");
    snprintf(path, sizeof path, "%s/file", dir);
    npy();
    idx();
    unlink(path);
    rmdir(dir);
    return check_report("test_readers");
}
