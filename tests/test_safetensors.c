/* The model format: safetensors with the config in __metadata__. Round
 * trips in F32/F16/BF16, and a strict loader that rejects every malformed
 * file with a message naming the file and tensor, never crashing (a
 * truncation and byte-flip sweep runs at the end; run it under ASan). */
#include "check.h"
#include "difflux.h"

#include <cjson/cJSON.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static char dir[] = "/tmp/difflux-test-st-XXXXXX";
static char path[256];
static dfx_backend *be;

static const char *CONFIG =
    "{\"version\":1,\"kind\":\"gmm\",\"image\":{\"channels\":1,\"height\":2,\"width\":2},"
    "\"data\":{\"range\":[-1,1]},\"path\":{\"family\":\"linear\"},\"prediction\":\"data\","
    "\"gmm\":{\"components\":2}}";

/* A tensor entry of the header. */
static void entry(cJSON *root, const char *name, const char *dtype, int nd, const int *shape,
                  long b, long e)
{
    cJSON *t = cJSON_AddObjectToObject(root, name);
    cJSON_AddStringToObject(t, "dtype", dtype);
    cJSON *s = cJSON_AddArrayToObject(t, "shape");
    for (int i = 0; i < nd; i++) cJSON_AddItemToArray(s, cJSON_CreateNumber(shape[i]));
    cJSON *o = cJSON_AddArrayToObject(t, "data_offsets");
    cJSON_AddItemToArray(o, cJSON_CreateNumber((double)b));
    cJSON_AddItemToArray(o, cJSON_CreateNumber((double)e));
}

/* The header of a valid 2-component model; callers edit it. */
static cJSON *good_header(const char *config)
{
    cJSON *r = cJSON_CreateObject();
    cJSON *m = cJSON_AddObjectToObject(r, "__metadata__");
    cJSON_AddStringToObject(m, "format", "difflux");
    if (config) cJSON_AddStringToObject(m, "config", config);
    entry(r, "gmm.means", "F32", 4, (int[]){2, 1, 2, 2}, 0, 32);
    entry(r, "gmm.stds", "F32", 1, (int[]){2}, 32, 40);
    entry(r, "gmm.weights", "F32", 1, (int[]){2}, 40, 48);
    return r;
}

/* Writes 8-byte length + header text + data bytes; len_override >= 0
 * replaces the length field. */
static void write_raw(const char *hdr, size_t hlen, const void *data, size_t n, long long len_override)
{
    FILE *f = fopen(path, "wb");
    unsigned long long L = len_override >= 0 ? (unsigned long long)len_override : hlen;
    for (int i = 0; i < 8; i++) fputc((int)((L >> (8 * i)) & 0xff), f);
    fwrite(hdr, 1, hlen, f);
    if (n) fwrite(data, 1, n, f);
    fclose(f);
}

/* means (8), stds (2), weights (2), and one spare value */
static const float DATA[13] = {0.1f, 0.2f, 0.3f, 0.4f, -0.1f, -0.2f, -0.3f, -0.4f,
                               0.05f, 0.1f, 1.0f, 3.0f, 9.0f};

static void write_header(cJSON *r, size_t ndata)
{
    char *h = cJSON_PrintUnformatted(r);
    write_raw(h, strlen(h), DATA, ndata, -1);
    free(h);
    cJSON_Delete(r);
}

/* Loading must fail with a message holding `want` and the file name. */
static void expect_fail(const char *what, const char *want)
{
    dfx_error err = {{0}};
    dfx_model *m = dfx_model_load(path, be, &err);
    CHECK(m == NULL, "%s: loaded a malformed file", what);
    CHECK(strstr(err.msg, want) != NULL, "%s: message '%s' lacks '%s'", what, err.msg, want);
    CHECK(strstr(err.msg, path) != NULL || strstr(err.msg, "gmm") != NULL,
          "%s: message '%s' names no file", what, err.msg);
    dfx_model_free(m);
}

static void malformed(void)
{
    cJSON *r;
    write_raw("", 0, NULL, 0, -1);
    expect_fail("no header", "implausible header length");
    FILE *f = fopen(path, "wb");
    fputs("abc", f);
    fclose(f);
    expect_fail("3-byte file", "too short");
    write_raw("{}", 2, NULL, 0, 1LL << 62);
    expect_fail("huge header length", "exceeds the file size");
    write_raw("{\"a\": ", 6, NULL, 0, -1);
    expect_fail("bad JSON", "not valid JSON");
    write_raw("[1, 2]", 6, NULL, 0, -1);
    expect_fail("JSON array header", "not a JSON object");

    write_header(good_header(CONFIG), 24); /* data cut short */
    expect_fail("truncated data", "outside the");

    r = good_header(CONFIG);
    cJSON_ReplaceItemInObject(cJSON_GetObjectItem(r, "gmm.stds"), "dtype", cJSON_CreateString("F64"));
    write_header(r, 48);
    expect_fail("unknown dtype", "unsupported dtype 'F64'");

    r = good_header(CONFIG);
    cJSON_DeleteItemFromObject(r, "gmm.means");
    entry(r, "gmm.means", "F32", 4, (int[]){2, 1, 4, 1}, 0, 32);
    write_header(r, 48);
    expect_fail("wrong shape", "has shape [2, 1, 4, 1], the config implies [2, 1, 2, 2]");

    r = good_header(CONFIG);
    cJSON_DeleteItemFromObject(r, "gmm.stds");
    entry(r, "gmm.stds", "F32", 1, (int[]){2}, 28, 36);
    write_header(r, 48);
    expect_fail("overlapping offsets", "overlap");

    r = good_header(CONFIG);
    cJSON_DeleteItemFromObject(r, "gmm.stds");
    entry(r, "gmm.stds", "F32", 1, (int[]){2}, 32, 44);
    write_header(r, 48);
    expect_fail("byte count", "bytes of data");

    r = good_header(CONFIG);
    cJSON_DeleteItemFromObject(r, "gmm.stds");
    entry(r, "gmm.stds", "F32", 1, (int[]){2}, -8, 0);
    write_header(r, 48);
    expect_fail("negative offset", "data_offsets must be");

    r = good_header(CONFIG);
    cJSON_DeleteItemFromObject(r, "gmm.weights");
    write_header(r, 48);
    expect_fail("missing tensor", "missing tensor 'gmm.weights'");

    r = good_header(CONFIG);
    entry(r, "extra", "F32", 1, (int[]){1}, 48, 52);
    write_header(r, 52);
    expect_fail("unknown tensor", "unknown tensor 'extra'");

    write_header(good_header(NULL), 48);
    expect_fail("no config", "no difflux config");

    r = good_header(CONFIG);
    cJSON_ReplaceItemInObject(cJSON_GetObjectItem(r, "__metadata__"), "format",
                              cJSON_CreateString("other"));
    write_header(r, 48);
    expect_fail("foreign format", "not a difflux model");

    write_header(good_header("{\"version\": 1,"), 48);
    expect_fail("bad config JSON", "config in __metadata__ is not valid JSON");

    char cfg[1024];
    snprintf(cfg, sizeof cfg, "%s", CONFIG);
    memcpy(strstr(cfg, "\"gmm\",\"image\""), "\"xyz\"", 5);
    write_header(good_header(cfg), 48);
    expect_fail("unknown kind", "unknown model kind 'xyz'");

    snprintf(cfg, sizeof cfg, "%s", CONFIG);
    memcpy(strstr(cfg, "linear"), "banana", 6);
    write_header(good_header(cfg), 48);
    expect_fail("unknown path", "path.family must be one of");

    snprintf(cfg, sizeof cfg, "%s", CONFIG);
    memcpy(strstr(cfg, "\"height\":2"), "\"height\":0", 10);
    write_header(good_header(cfg), 48);
    expect_fail("zero height", "image.height must be an integer");

    /* a component with std 0 has no density */
    {
        float d[12];
        memcpy(d, DATA, sizeof d);
        d[9] = 0.0f;
        char *h = cJSON_PrintUnformatted(r = good_header(CONFIG));
        write_raw(h, strlen(h), d, 48, -1);
        free(h);
        cJSON_Delete(r);
        expect_fail("zero std", "must be positive");
    }
    /* duplicate names: cJSON keeps both, the loader must not */
    {
        const char *dup = "{\"__metadata__\":{\"format\":\"difflux\"},"
                          "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
                          "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}";
        write_raw(dup, strlen(dup), DATA, 8, -1);
        expect_fail("duplicate tensor", "appears twice");
    }
}

/* ------------------------------------------------ hardening (issue #17) */

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Loading must succeed. */
static void expect_load(const char *what)
{
    dfx_error err = {{0}};
    dfx_model *m = dfx_model_load(path, be, &err);
    CHECK(m != NULL, "%s: refused: %s", what, err.msg);
    dfx_model_free(m);
}

/* The header text of the good model with `config`, as a malloc'd string. */
static char *good_text(const char *config)
{
    cJSON *r = good_header(config);
    char *h = cJSON_PrintUnformatted(r);
    cJSON_Delete(r);
    return h;
}

/* Writes the good model's header with the first `from` replaced by `to`. */
static void write_edited(const char *config, const char *from, const char *to, size_t ndata)
{
    char *h = good_text(config);
    char *at = strstr(h, from);
    CHECK(at != NULL, "'%s' not in the header", from);
    size_t hl = strlen(h), fl = strlen(from), tl = strlen(to);
    char *e = malloc(hl - fl + tl + 1);
    size_t pre = at ? (size_t)(at - h) : hl;
    memcpy(e, h, pre);
    memcpy(e + pre, to, tl);
    if (at) memcpy(e + pre + tl, at + fl, hl - pre - fl + 1);
    else e[pre + tl] = 0;
    write_raw(e, strlen(e), DATA, ndata, -1);
    free(e);
    free(h);
}

/* The config with the first `from` replaced by `to` (static buffer). */
static const char *config_edit(const char *from, const char *to)
{
    static char buf[2048];
    const char *at = strstr(CONFIG, from);
    CHECK(at != NULL, "'%s' not in the config", from);
    if (!at) return CONFIG;
    snprintf(buf, sizeof buf, "%.*s%s%s", (int)(at - CONFIG), CONFIG, to, at + strlen(from));
    return buf;
}

/* Rewrites fixture `src` into `path` with its config edited: the number
 * at `key` inside section `sect` set to the JSON text `num` (which cJSON
 * could not print: 1e999 is Inf). */
static void fixture_with(const char *src, const char *sect, const char *key, const char *num)
{
    FILE *fp = fopen(src, "rb");
    CHECK(fp != NULL, "open %s", src);
    if (!fp) return;
    fseek(fp, 0, SEEK_END);
    size_t n = (size_t)ftell(fp);
    rewind(fp);
    unsigned char *b = malloc(n);
    CHECK(fread(b, 1, n, fp) == n, "read %s", src);
    fclose(fp);
    size_t hl = 0;
    for (int i = 7; i >= 0; i--) hl = hl << 8 | b[i];
    cJSON *h = cJSON_ParseWithLength((const char *)b + 8, hl);
    cJSON *md = cJSON_GetObjectItem(h, "__metadata__");
    cJSON *cfg = cJSON_Parse(cJSON_GetObjectItem(md, "config")->valuestring);
    cJSON *sec = cJSON_GetObjectItem(cfg, sect);
    cJSON_DeleteItemFromObject(sec, key);
    cJSON_AddNumberToObject(sec, key, 424242.5);
    char *ct = cJSON_PrintUnformatted(cfg), edited[8192];
    char *at = strstr(ct, "424242.5");
    snprintf(edited, sizeof edited, "%.*s%s%s", (int)(at - ct), ct, num, at + 8);
    cJSON_ReplaceItemInObject(md, "config", cJSON_CreateString(edited));
    char *ht = cJSON_PrintUnformatted(h);
    write_raw(ht, strlen(ht), b + 8 + hl, n - 8 - hl, -1);
    free(ht);
    free(ct);
    cJSON_Delete(cfg);
    cJSON_Delete(h);
    free(b);
}

/* 200,000 tiny tensors: the duplicate check was quadratic (208 to 330 s
 * in a release build). The bound is generous: the loader takes half a
 * second in a release build and 5 to 15 s under ASan on a loaded 2-core
 * machine, so only a check that grows faster than n log n fails it. */
static void many_tensors(void)
{
    enum { N = 200000 };
    size_t cap = (size_t)N * 96 + 4096, o = 0;
    char *h = malloc(cap), *cfg = good_text(CONFIG);
    size_t cl = strlen(cfg);
    memcpy(h, cfg, cl - 1); /* without the closing brace */
    o = cl - 1;
    for (int i = 0; i < N; i++)
        o += (size_t)snprintf(h + o, cap - o,
                              ",\"extra.%06d\":{\"dtype\":\"F32\",\"shape\":[1],"
                              "\"data_offsets\":[%d,%d]}",
                              i, 48 + 4 * i, 52 + 4 * i);
    size_t body = o;
    h[o++] = '}';
    size_t nd = 48 + 4 * (size_t)N;
    unsigned char *data = calloc(nd, 1);
    memcpy(data, DATA, 48);
    write_raw(h, o, data, nd, -1);
    double t0 = now_s();
    expect_fail("200k tensors", "unknown tensor 'extra.000000'");
    double dt = now_s() - t0;
    CHECK(dt < 60.0, "200,000 tensors took %.1f s to refuse (a quadratic check?)", dt);
    /* and a duplicate at the very end is found as quickly */
    o = body + (size_t)snprintf(h + body, cap - body,
                                ",\"extra.000007\":{\"dtype\":\"F32\",\"shape\":[0],"
                                "\"data_offsets\":[0,0]}}");
    write_raw(h, o, data, nd, -1);
    t0 = now_s();
    expect_fail("200k tensors, one twice", "tensor 'extra.000007' appears twice");
    dt = now_s() - t0;
    CHECK(dt < 60.0, "200,000 tensors with a duplicate took %.1f s", dt);
    printf("200,000 tensors: refused in %.2f s\n", dt);
    free(data);
    free(cfg);
    free(h);
}

static void hardening(void)
{
    /* 13: the file size in the message is the file's, not 0 */
    write_raw("{}", 2, NULL, 0, 1LL << 62);
    expect_fail("huge header length", "exceeds the file size 10 ");

    /* 4: duplicate keys at every level, refused (they leaked and resolved
     * inconsistently) */
    write_edited(CONFIG, "{\"format\":\"difflux\"", "{\"format\":\"difflux\",\"format\":\"x\"", 48);
    expect_fail("format twice", "key 'format' appears twice in __metadata__");
    write_edited(CONFIG, "\"config\":", "\"config\":\"{}\",\"config\":", 48);
    expect_fail("config twice", "key 'config' appears twice in __metadata__");
    write_edited(CONFIG, "{\"__metadata__\"", "{\"__metadata__\":{},\"__metadata__\"", 48);
    expect_fail("__metadata__ twice", "key '__metadata__' appears twice");
    write_edited(CONFIG, "\"dtype\":\"F32\"", "\"dtype\":\"F32\",\"dtype\":\"F16\"", 48);
    expect_fail("dtype twice", "key 'dtype' appears twice in gmm.means");
    write_header(good_header(config_edit("\"height\":2", "\"height\":2,\"height\":3")), 48);
    expect_fail("config key twice", "config: key 'height' appears twice in image");
    write_header(good_header(config_edit("\"kind\":\"gmm\"", "\"kind\":\"gmm\",\"kind\":\"unet\"")),
                 48);
    expect_fail("config kind twice", "config: key 'kind' appears twice in the top level");
    write_header(good_header(config_edit("\"components\":2", "\"components\":2,\"components\":2")),
                 48);
    expect_fail("config kind section key twice", "key 'components' appears twice in gmm");

    /* "guide": a file beside the model and a finite weight */
    static const char *const bad_guides[] = {
        "{\"file\":\"g.safetensors\"}", "{\"file\":\"../g.safetensors\",\"weight\":2}",
        "{\"file\":\"\",\"weight\":2}", "\"g.safetensors\"", "{\"file\":3,\"weight\":2}"};
    for (size_t i = 0; i < sizeof bad_guides / sizeof bad_guides[0]; i++) {
        char to[160];
        snprintf(to, sizeof to, "\"prediction\":\"data\",\"guide\":%s", bad_guides[i]);
        write_header(good_header(config_edit("\"prediction\":\"data\"", to)), 48);
        expect_fail(bad_guides[i], "config: guide must be {\"file\": NAME of a file beside");
    }
    write_header(good_header(config_edit(
                     "\"prediction\":\"data\"",
                     "\"prediction\":\"data\",\"guide\":{\"file\":\"g.safetensors\",\"weight\":1.5}")),
                 48);
    {
        dfx_error err = {{0}};
        dfx_model *m = dfx_model_load(path, be, &err);
        CHECK(m != NULL, "a guide in the config: %s", err.msg);
        if (m) {
            char want[300];
            snprintf(want, sizeof want, "%s/g.safetensors", dir);
            const dfx_model_info *mi = dfx_model_get_info(m);
            CHECK(strcmp(mi->guide, want) == 0 && mi->guide_weight == 1.5,
                  "guide resolved to '%s' (weight %g), not '%s'", mi->guide, mi->guide_weight,
                  want);
        }
        dfx_model_free(m);
    }

    /* 5: a NUL hides the rest of a name; control bytes are no names */
    write_edited(CONFIG, "\"gmm.means\"", "\"gmm.means\\u0000junk\"", 48);
    expect_fail("NUL in a name", "\\u0000 (NUL) escape");
    write_edited(CONFIG, "\"gmm.means\"", "\"gmm.means\\u001f\"", 48);
    expect_fail("control byte in a name", "tensor name 'gmm.means...' holds the control byte 0x1f");
    write_edited(CONFIG, "\"difflux\"", "\"difflux\\u0000junk\"", 48);
    expect_fail("NUL in a value", "\\u0000 (NUL) escape");
    write_header(good_header(config_edit("\"data\"", "\"da\\u0000ta\"")), 48);
    expect_fail("NUL in a config key", "\\u0000 (NUL) escape");
    write_header(good_header(config_edit("\"data\"", "\"da\\nta\"")), 48);
    expect_fail("newline in a config key", "a key in the top level holds the control byte 0x0a");

    /* 6: after the header only spaces; no BOM, no NUL padding, no garbage */
    {
        char *h = good_text(CONFIG), buf[4096];
        size_t hl = strlen(h);
        memcpy(buf, h, hl);
        memcpy(buf + hl, "   ", 3);
        write_raw(buf, hl + 3, DATA, 48, -1);
        expect_load("space padding");
        memcpy(buf + hl, "\0\0\0", 3);
        write_raw(buf, hl + 3, DATA, 48, -1);
        expect_fail("NUL padding", "control byte between tokens at byte");
        memcpy(buf + hl, "xyz", 3);
        write_raw(buf, hl + 3, DATA, 48, -1);
        expect_fail("trailing garbage", "after its end");
        memcpy(buf + hl, "{} ", 3);
        write_raw(buf, hl + 3, DATA, 48, -1);
        expect_fail("a second object", "after its end");
        memcpy(buf + hl, "\n  ", 3);
        write_raw(buf, hl + 3, DATA, 48, -1);
        expect_fail("newline padding", "only spaces may pad the header");
        memcpy(buf, "\xef\xbb\xbf", 3);
        memcpy(buf + 3, h, hl);
        write_raw(buf, hl + 3, DATA, 48, -1);
        expect_fail("byte-order mark", "starts with byte 0xef");
        buf[0] = '{';
        buf[1] = '\x01';
        memcpy(buf + 2, h + 1, hl - 1);
        write_raw(buf, hl + 1, DATA, 48, -1);
        expect_fail("control byte between tokens", "control byte between tokens at byte 1");
        free(h);
    }
    char cfg[1024];
    snprintf(cfg, sizeof cfg, "%s x", CONFIG);
    write_header(good_header(cfg), 48);
    expect_fail("garbage after the config", "config in __metadata__ is not valid JSON here");
    snprintf(cfg, sizeof cfg, "%s{}", CONFIG);
    write_header(good_header(cfg), 48);
    expect_fail("two configs", "after its end");
    snprintf(cfg, sizeof cfg, "\xef\xbb\xbf%s", CONFIG);
    write_header(good_header(cfg), 48);
    expect_fail("config with a BOM", "byte-order mark");
    snprintf(cfg, sizeof cfg, "\n%s\n", CONFIG);
    write_header(good_header(cfg), 48);
    expect_load("config with whitespace around it");

    /* 7: non-finite numbers, and numbers that float32 cannot hold */
    write_header(good_header(config_edit("[-1,1]", "[-1e999,1]")), 48);
    expect_fail("range -Inf", "config: data.range[0] is not a finite number");
    write_header(good_header(config_edit("[-1,1]", "[-1,1e999]")), 48);
    expect_fail("range Inf", "config: data.range[1] is not a finite number");
    write_header(good_header(config_edit("[-1,1]", "[-1,1e39]")), 48);
    expect_fail("range beyond float", "data.range[1] = 1e+39 does not fit a float32");
    write_header(good_header(config_edit("[-1,1]", "[1,1.00000001]")), 48);
    expect_fail("range empty in float", "data.range must have low < high");
    write_header(good_header(config_edit("\"version\":1", "\"version\":1,\"note\":1e-300")), 48);
    expect_fail("underflow anywhere", "config: note = 1e-300 does not fit a float32 (it would become 0)");
    const char *unet = DFX_TEST_DATA "/fixtures/unet_tiny.safetensors";
    const char *cls = DFX_TEST_DATA "/fixtures/classifier_tiny.safetensors";
    fixture_with(unet, "unet", "time_scale", "1000");
    expect_load("unet fixture, rewritten");
    fixture_with(unet, "unet", "time_scale", "1e999");
    expect_fail("unet time_scale Inf", "config: unet.time_scale is not a finite number");
    fixture_with(unet, "unet", "norm_eps", "1e-300");
    expect_fail("unet norm_eps 1e-300",
                "config: unet.norm_eps = 1e-300 does not fit a float32 (it would become 0)");
    fixture_with(cls, "classifier", "norm_eps", "1e-300");
    expect_fail("classifier norm_eps 1e-300", "config: classifier.norm_eps = 1e-300");
    fixture_with(unet, "path", "sigma_max", "-1e999");
    expect_fail("path number -Inf", "config: path.sigma_max is not a finite number");

    /* 3: only regular files are read (a FIFO would block: tests/test_loader.sh) */
    {
        dfx_error err = {{0}};
        dfx_model *m = dfx_model_load(dir, be, &err);
        CHECK(m == NULL && strstr(err.msg, "not a regular file (a directory)"), "directory: %s",
              err.msg);
        dfx_model_free(m);
    }

    /* the in-memory entry point shares the checks */
    {
        char *h = good_text(CONFIG);
        size_t hl = strlen(h);
        unsigned char *img = malloc(8 + hl + 48);
        for (int i = 0; i < 8; i++) img[i] = (unsigned char)((unsigned long long)hl >> (8 * i));
        memcpy(img + 8, h, hl);
        memcpy(img + 8 + hl, DATA, 48);
        dfx_error err = {{0}};
        dfx_model *m = dfx_model_load_mem(img, 8 + hl + 48, "buffer", be, &err);
        CHECK(m != NULL, "load from memory: %s", err.msg);
        dfx_model_free(m);
        m = dfx_model_load_mem(img, 8 + hl + 40, "buffer", be, &err);
        CHECK(m == NULL && strstr(err.msg, "buffer: tensor"), "short buffer: %s", err.msg);
        dfx_model_free(m);
        m = dfx_model_load_mem(img, 5, "buffer", be, &err);
        CHECK(m == NULL && strstr(err.msg, "too short"), "5-byte buffer: %s", err.msg);
        dfx_model_free(m);
        free(img);
        free(h);
    }
    many_tensors();
}

/* Valid models in every storage dtype load and evaluate. */
static void round_trips(void)
{
    dfx_error err = {{0}};
    float means[8] = {0.5f, -0.25f, 1.0f, -1.0f, 0.125f, 0.75f, -0.5f, 0.0f};
    float stds[2] = {0.25f, 0.5f}, w[2] = {1.0f, 3.0f};
    dfx_path p;
    dfx_path_default(&p, DFX_PATH_VP);
    CHECK_OK(dfx_gmm_save(path, &p, 1, 2, 2, -1, 1, 2, means, stds, w, "unit test", "two",
                          &err),
             err);
    dfx_model *m = dfx_model_load(path, be, &err);
    CHECK(m != NULL, "load: %s", err.msg);
    if (m) {
        const dfx_model_info *i = dfx_model_get_info(m);
        CHECK(strcmp(i->kind, "gmm") == 0 && i->path.family == DFX_PATH_VP &&
                  i->prediction == DFX_PRED_DATA && i->height == 2 && i->width == 2 &&
                  strcmp(i->dataset, "unit test") == 0,
              "info");
        /* far from the data end the denoiser is the weighted mean of the means */
        double t[1] = {1.0};
        float x[4] = {0, 0, 0, 0}, out[4];
        CHECK_OK(dfx_model_eval_host(m, t, x, 1, DFX_PRED_DATA, out, &err), err);
        for (int j = 0; j < 4; j++)
            CHECK_NEAR(out[j], 0.25 * means[j] + 0.75 * means[4 + j], 2e-3, "prior mean");
        dfx_model_free(m);
    }
    /* F16 and BF16 storage: hand-written header with the same values,
     * all exactly representable in both types */
    const uint16_t f16[12] = {0x3800, 0xb400, 0x3c00, 0xbc00, 0x3000, 0x3a00, 0xb800, 0x0000,
                              0x3400, 0x3800, 0x3c00, 0x4200};
    const uint16_t bf16[12] = {0x3f00, 0xbe80, 0x3f80, 0xbf80, 0x3e00, 0x3f40, 0xbf00, 0x0000,
                               0x3e80, 0x3f00, 0x3f80, 0x4040};
    const char *types[2] = {"F16", "BF16"};
    for (int ty = 0; ty < 2; ty++) {
        cJSON *r = cJSON_CreateObject();
        cJSON *md = cJSON_AddObjectToObject(r, "__metadata__");
        cJSON_AddStringToObject(md, "format", "difflux");
        cJSON_AddStringToObject(md, "config", CONFIG);
        entry(r, "gmm.means", types[ty], 4, (int[]){2, 1, 2, 2}, 0, 16);
        entry(r, "gmm.stds", types[ty], 1, (int[]){2}, 16, 20);
        entry(r, "gmm.weights", types[ty], 1, (int[]){2}, 20, 24);
        char *h = cJSON_PrintUnformatted(r);
        write_raw(h, strlen(h), ty ? (const void *)bf16 : (const void *)f16, 24, -1);
        free(h);
        cJSON_Delete(r);
        m = dfx_model_load(path, be, &err);
        CHECK(m != NULL, "%s load: %s", types[ty], err.msg);
        if (!m) continue;
        double t[1] = {0.0}; /* linear path, t = 0: a = 0, x_hat = prior mean */
        float x[4] = {0, 0, 0, 0}, out[4];
        CHECK_OK(dfx_model_eval_host(m, t, x, 1, DFX_PRED_DATA, out, &err), err);
        /* weights 1 and 3 (last two values 1.0, 3.0) */
        for (int j = 0; j < 4; j++)
            CHECK_NEAR(out[j], 0.25 * means[j] + 0.75 * means[4 + j], 1e-6, types[ty]);
        dfx_model_free(m);
    }
}

/* Every truncation and many random byte flips of a valid file: the loader
 * returns a model or an error, and never crashes or reads out of bounds. */
static void sweep(void)
{
    dfx_error err = {{0}};
    write_header(good_header(CONFIG), 48);
    FILE *f = fopen(path, "rb");
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    rewind(f);
    unsigned char *buf = malloc((size_t)n);
    CHECK(fread(buf, 1, (size_t)n, f) == (size_t)n, "read");
    fclose(f);
    int loaded = 0, refused = 0;
    for (long cut = 0; cut < n; cut++) {
        f = fopen(path, "wb");
        fwrite(buf, 1, (size_t)cut, f);
        fclose(f);
        dfx_model *m = dfx_model_load(path, be, &err);
        if (m) loaded++;
        else {
            refused++;
            CHECK(err.msg[0] != 0, "truncation at %ld: no message", cut);
        }
        dfx_model_free(m);
    }
    CHECK(loaded == 0, "%d truncated files loaded", loaded);
    srand(1);
    for (int it = 0; it < 3000; it++) {
        unsigned char *b = malloc((size_t)n);
        memcpy(b, buf, (size_t)n);
        int flips = 1 + rand() % 4;
        for (int k = 0; k < flips; k++) b[rand() % n] = (unsigned char)rand();
        f = fopen(path, "wb");
        fwrite(b, 1, (size_t)n, f);
        fclose(f);
        err.msg[0] = 0;
        dfx_model *m = dfx_model_load(path, be, &err);
        if (!m) CHECK(err.msg[0] != 0, "flip %d: no message", it);
        dfx_model_free(m);
        free(b);
    }
    printf("sweep: %d truncations refused, 3000 byte-flipped files handled\n", refused);
    free(buf);
}

int main(void)
{
    CHECK(mkdtemp(dir) != NULL, "mkdtemp");
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    dfx_error err;
    be = dfx_backend_create("cpu", 1, &err);
    round_trips();
    malformed();
    hardening();
    sweep();
    unlink(path);
    rmdir(dir);
    dfx_backend_destroy(be);
    return check_report("test_safetensors");
}
