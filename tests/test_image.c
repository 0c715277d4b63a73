/* PNG grids decoded back (stb_image) and compared pixel by pixel; .npy
 * header and data; atomic writes leave no partial or temporary files. */
#include "check.h"
#include "difflux.h"

#include <dirent.h>
#include <stb_image.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

static int count_tmp(const char *dir)
{
    int n = 0;
    DIR *d = opendir(dir);
    struct dirent *e;
    while (d && (e = readdir(d)))
        if (strstr(e->d_name, ".tmp")) n++;
    if (d) closedir(d);
    return n;
}

int main(void)
{
    char dir[] = "/tmp/difflux-test-image-XXXXXX";
    CHECK(mkdtemp(dir) != NULL, "mkdtemp");
    char png[256], npy[256];
    snprintf(png, sizeof png, "%s/grid.png", dir);
    snprintf(npy, sizeof npy, "%s/x.npy", dir);
    dfx_error err = {{0}};

    /* 5 images of 2 x 3 in data range [-1, 1]: image i has value v_i at
     * pixel (0,0), -1 elsewhere except pixel (1,2) = +1. */
    enum { N = 5, H = 2, W = 3 };
    const float vals[N] = {-1.0f, 1.0f, 0.0f, -3.0f, 7.0f}; /* black, white, mid, clamped */
    const int want[N] = {0, 255, 128, 0, 255};
    float img[N * H * W];
    for (int i = 0; i < N; i++) {
        for (int j = 0; j < H * W; j++) img[i * H * W + j] = -1.0f;
        img[i * H * W] = vals[i];
        img[i * H * W + 1 * W + 2] = 1.0f;
    }
    dfx_grid_layout L = {3, 1, 0.5, 2}; /* 3 columns, 1 px padding of grey, 2x upscale */
    CHECK_OK(dfx_write_png_grid(png, img, N, 1, H, W, -1.0, 1.0, &L, &err), err);
    int w, h, c;
    unsigned char *px = stbi_load(png, &w, &h, &c, 0);
    CHECK(px != NULL, "decode %s", png);
    /* 3 columns x 2 rows of (6 x 4) tiles with 1 px padding */
    CHECK(w == 3 * (6 + 1) + 1 && h == 2 * (4 + 1) + 1 && c == 1, "size %d x %d x %d", w, h, c);
    if (px && w == 22 && h == 11) {
        CHECK(px[0] == 128, "padding grey: %d", px[0]);
        for (int i = 0; i < N; i++) {
            int x0 = 1 + (i % 3) * 7, y0 = 1 + (i / 3) * 5;
            for (int dy = 0; dy < 2; dy++)
                for (int dx = 0; dx < 2; dx++) /* upscaled pixel (0,0) */
                    CHECK(px[(y0 + dy) * w + x0 + dx] == want[i], "image %d pixel (0,0): %d vs %d",
                          i, px[(y0 + dy) * w + x0 + dx], want[i]);
            CHECK(px[(y0 + 2) * w + x0 + 4] == 255, "image %d pixel (1,2) white", i);
            CHECK(px[(y0 + 1) * w + x0 + 3] == 0, "image %d pixel (0,1) black", i);
        }
        /* the empty sixth cell is padding */
        CHECK(px[(1 + 5) * w + 1 + 14] == 128, "empty cell");
    }
    stbi_image_free(px);

    /* RGB */
    float rgb[3 * 1 * 1] = {1.0f, -1.0f, 0.0f};
    dfx_grid_layout L1 = {1, 0, 0, 1};
    CHECK_OK(dfx_write_png_grid(png, rgb, 1, 3, 1, 1, -1, 1, &L1, &err), err);
    px = stbi_load(png, &w, &h, &c, 0);
    CHECK(px && w == 1 && h == 1 && c == 3 && px[0] == 255 && px[1] == 0 && px[2] == 128,
          "rgb pixel");
    stbi_image_free(px);

    /* .npy: header says <f4, the shape, C order; the data follow */
    int64_t shape[4] = {N, 1, H, W};
    CHECK_OK(dfx_write_npy(npy, img, 4, shape, &err), err);
    FILE *f = fopen(npy, "rb");
    unsigned char head[10];
    CHECK(f && fread(head, 1, 10, f) == 10, "read npy");
    CHECK(memcmp(head, "\x93NUMPY\x01\x00", 8) == 0, "npy magic");
    int hl = head[8] | head[9] << 8;
    CHECK((10 + hl) % 64 == 0, "npy header aligned to 64: %d", 10 + hl);
    char *dict = calloc(1, (size_t)hl + 1);
    CHECK(fread(dict, 1, (size_t)hl, f) == (size_t)hl, "npy header");
    CHECK(strstr(dict, "'descr': '<f4'") && strstr(dict, "'shape': (5, 1, 2, 3)") &&
              strstr(dict, "'fortran_order': False") && dict[hl - 1] == '\n',
          "npy header: %s", dict);
    float back[N * H * W];
    CHECK(fread(back, sizeof(float), N * H * W, f) == N * H * W, "npy data");
    CHECK(memcmp(back, img, sizeof back) == 0, "npy data round trip");
    CHECK(fgetc(f) == EOF, "nothing after the data");
    free(dict);
    if (f) fclose(f);
    /* and read back: the values and the row count; a wrong row size, a
     * truncated file and a file that is no .npy are refused by name */
    long rows = 0;
    float *rd = dfx_read_npy(npy, H * W, &rows, &err);
    CHECK(rd && rows == N && memcmp(rd, img, sizeof back) == 0, "npy read back: %s", err.msg);
    free(rd);
    CHECK(dfx_read_npy(npy, 7, &rows, &err) == NULL && strstr(err.msg, "rows of 7 values"),
          "npy with the wrong row size: %s", err.msg);
    char cut[300];
    snprintf(cut, sizeof cut, "%s/cut.npy", dir);
    FILE *src = fopen(npy, "rb"), *dst = fopen(cut, "wb");
    char buf[4096];
    size_t got = src ? fread(buf, 1, sizeof buf, src) : 0;
    if (dst) fwrite(buf, 1, got > 4 ? got - 4 : 0, dst);
    if (src) fclose(src);
    if (dst) fclose(dst);
    CHECK(dfx_read_npy(cut, H * W, &rows, &err) == NULL && strstr(err.msg, "shorter than its shape"),
          "truncated npy: %s", err.msg);
    CHECK(dfx_read_npy(png, H * W, &rows, &err) == NULL && strstr(err.msg, "not a .npy file"),
          "a PNG read as npy: %s", err.msg);
    unlink(cut);

    /* failures: no file, no temporary left behind, a message naming the file */
    char bad[300];
    snprintf(bad, sizeof bad, "%s/missing-dir/grid.png", dir);
    CHECK(dfx_write_png_grid(bad, img, N, 1, H, W, -1, 1, &L, &err) != 0, "missing directory");
    CHECK(strstr(err.msg, "missing-dir/grid.png") != NULL, "message: %s", err.msg);
    CHECK(dfx_write_png_grid(png, img, N, 2, H, W / 2, -1, 1, &L, &err) != 0, "2 channels");
    CHECK(dfx_write_png_grid(png, img, N, 1, H, W, 1, 1, &L, &err) != 0, "empty range");
    /* an existing file is replaced whole, never left half-written */
    struct stat st;
    CHECK(stat(png, &st) == 0 && st.st_size > 0, "earlier grid still there");
    CHECK(count_tmp(dir) == 0, "temporary files left in %s", dir);

    unlink(png);
    unlink(npy);
    rmdir(dir);
    return check_report("test_image");
}
