#define _POSIX_C_SOURCE 200809L
#include "io/safetensors.h"
#include "core/error.h"
#include "io/fileio.h"
#include "core/half.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

static const char *dtype_names[] = {"F32", "F16", "BF16"};
static const size_t dtype_size[] = {4, 2, 2};

const char *dfx_dtype_name(dfx_dtype d)
{
    return dtype_names[d];
}

static char *dup_str(const char *s)
{
    size_t n = strlen(s) + 1;
    char *p = malloc(n);
    if (p) memcpy(p, s, n);
    return p;
}

/* A JSON number that is a non-negative integer exactly representable. */
static int json_uint(const cJSON *j, uint64_t *out)
{
    if (!cJSON_IsNumber(j)) return -1;
    double v = j->valuedouble;
    if (!(v >= 0.0) || v > 9007199254740992.0 || v != floor(v)) return -1;
    *out = (uint64_t)v;
    return 0;
}

/* ------------------------------------------------------- strict JSON */

/* Four hex digits at s (len bytes left): their value, or -1. */
static long hex4(const unsigned char *s, size_t len)
{
    if (len < 4) return -1;
    long v = 0;
    for (int i = 0; i < 4; i++) {
        int c = s[i], d = c >= '0' && c <= '9'   ? c - '0'
                          : c >= 'a' && c <= 'f' ? c - 'a' + 10
                          : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                                 : -1;
        if (d < 0) return -1;
        v = v * 16 + d;
    }
    return v;
}

/* What cJSON lets through and the format does not: a \u0000 escape (a NUL
 * inside a C string would hide what follows it), raw control bytes in
 * strings, and between tokens anything but JSON whitespace (cJSON skips
 * every byte <= 32, and a byte-order mark). The offending byte in *at. */
static const char *json_prescan(const unsigned char *s, size_t len, size_t *at)
{
    int in = 0;
    for (size_t i = 0; i < len; i++) {
        unsigned c = s[i];
        *at = i;
        if (in) {
            if (c == '"') {
                in = 0;
            } else if (c == '\\') {
                if (i + 1 < len && s[i + 1] == 'u' && hex4(s + i + 2, len - i - 2) == 0)
                    return "a \\u0000 (NUL) escape";
                i++;
            } else if (c < 0x20) {
                return "a raw control byte inside a string";
            }
        } else if (c == '"') {
            in = 1;
        } else if (c < 0x20 && c != '\t' && c != '\n' && c != '\r') {
            return "a control byte between tokens";
        } else if (c >= 0x7f) {
            return "a non-ASCII byte between tokens (a byte-order mark?)";
        }
    }
    return NULL;
}

typedef struct json_walk {
    const char *file;
    int config; /* the config: numbers must be finite float32 values */
    dfx_error *err;
} json_walk;

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* The first key that appears twice among an object's n children, or NULL:
 * sorted, so a header of 200,000 tensors costs n log n comparisons. */
static const char *duplicate_key(const cJSON *obj, int n, int *oom)
{
    const cJSON *a, *b;
    if (n <= 8) {
        for (a = obj->child; a; a = a->next)
            for (b = a->next; b; b = b->next)
                if (strcmp(a->string, b->string) == 0) return a->string;
        return NULL;
    }
    const char **keys = malloc((size_t)n * sizeof *keys);
    if (!keys) {
        *oom = 1;
        return NULL;
    }
    int k = 0;
    for (a = obj->child; a; a = a->next) keys[k++] = a->string;
    qsort(keys, (size_t)k, sizeof *keys, cmp_str);
    const char *dup = NULL;
    for (int i = 1; i < k && !dup; i++)
        if (strcmp(keys[i - 1], keys[i]) == 0) dup = keys[i];
    free(keys);
    return dup;
}

/* Where a value sits, for messages: "unet.channel_mult[2]", or "the top level". */
static const char *where(const char *path)
{
    return path[0] ? path : "the top level";
}

static int walk(const json_walk *w, const cJSON *j, char *path, size_t plen, size_t cap)
{
    const char *F = w->file, *P = w->config ? "config: " : "header: ";
    if (cJSON_IsNumber(j) && w->config) {
        double v = j->valuedouble;
        if (!isfinite(v))
            return dfx_fail(w->err, "%s: %s%s is not a finite number", F, P, where(path));
        /* (float)v only within range: converting beyond it is undefined */
        int over = fabs(v) > FLT_MAX, under = !over && v != 0.0 && (float)v == 0.0f;
        if (over || under)
            return dfx_fail(w->err, "%s: %s%s = %g does not fit a float32 (it would become %s)",
                            F, P, where(path), v, under ? "0" : "Inf");
    }
    if (!cJSON_IsObject(j) && !cJSON_IsArray(j)) return 0;
    int n = 0, index = 0;
    const cJSON *it;
    for (it = j->child; it; it = it->next, n++) {
        if (!cJSON_IsObject(j)) continue;
        if (!it->string) return dfx_fail(w->err, "%s: %sa key without a name", F, P);
        for (const unsigned char *c = (const unsigned char *)it->string; *c; c++)
            if (*c < 0x20 || *c == 0x7f) {
                if (!w->config && plen == 0)
                    return dfx_fail(w->err, "%s: tensor name '%.*s...' holds the control byte 0x%02x",
                                    F, (int)(c - (const unsigned char *)it->string), it->string,
                                    *c);
                return dfx_fail(w->err, "%s: %sa key in %s holds the control byte 0x%02x", F, P,
                                where(path), *c);
            }
    }
    if (cJSON_IsObject(j)) {
        int oom = 0;
        const char *dup = duplicate_key(j, n, &oom);
        if (oom) return dfx_fail(w->err, "%s: out of memory", F);
        if (dup && !w->config && plen == 0 && strcmp(dup, "__metadata__") != 0)
            return dfx_fail(w->err, "%s: tensor '%s' appears twice", F, dup);
        if (dup)
            return dfx_fail(w->err, "%s: %skey '%s' appears twice in %s", F, P, dup, where(path));
    }
    for (it = j->child; it; it = it->next, index++) {
        size_t o = plen;
        if (cJSON_IsObject(j))
            snprintf(path + o, cap - o, "%s%s", o ? "." : "", it->string);
        else
            snprintf(path + o, cap - o, "[%d]", index);
        size_t len = strlen(path);
        int rc = walk(w, it, path, len, cap);
        path[o] = 0;
        if (rc) return rc;
    }
    return 0;
}

cJSON *dfx_json_parse_strict(const char *text, size_t len, int config, const char *file,
                             dfx_error *err)
{
    const char *what = config ? "the config in __metadata__" : "the header";
    const unsigned char *s = (const unsigned char *)text;
    if (!config && len > 0 && s[0] != '{')
        return dfx_fail(err, "%s: %s is not a JSON object (it starts with byte 0x%02x, not '{')",
                        file, what, s[0]),
               NULL;
    size_t at = 0;
    const char *bad = json_prescan(s, len, &at);
    if (bad)
        return dfx_fail(err, "%s: %s is not valid JSON here: %s at byte %zu", file, what, bad,
                        at),
               NULL;
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(text, len, &end, 0);
    if (!root) {
        const char *e = cJSON_GetErrorPtr();
        long pos = (e && e >= text && e <= text + len) ? (long)(e - text) : -1;
        return dfx_fail(err, "%s: %s is not valid JSON (error near byte %ld)", file, what, pos),
               NULL;
    }
    /* the header may be padded with spaces, the config is JSON text */
    size_t i = end && end >= text && end <= text + len ? (size_t)(end - text) : len;
    for (; i < len; i++)
        if (!(s[i] == ' ' || (config && (s[i] == '\t' || s[i] == '\n' || s[i] == '\r')))) {
            dfx_fail(err,
                     "%s: %s is not valid JSON here: byte 0x%02x after its end, at byte %zu (%s)",
                     file, what, s[i], i,
                     config ? "only whitespace may follow" : "only spaces may pad the header");
            cJSON_Delete(root);
            return NULL;
        }
    char path[256] = "";
    json_walk w = {file, config, err};
    if (walk(&w, root, path, 0, sizeof path) != 0) {
        cJSON_Delete(root);
        return NULL;
    }
    return root;
}

/* --------------------------------------------------------------- reader */

static int cmp_begin(const void *a, const void *b)
{
    const dfx_st_tensor *x = *(const dfx_st_tensor *const *)a;
    const dfx_st_tensor *y = *(const dfx_st_tensor *const *)b;
    return (x->begin > y->begin) - (x->begin < y->begin);
}

static int parse_tensor(dfx_st_file *f, const cJSON *item, dfx_st_tensor *t, dfx_error *err)
{
    const char *P = f->path, *name = item->string;
    if (strlen(name) > 255) return dfx_fail(err, "%s: tensor name longer than 255 bytes", P);
    t->name = dup_str(name);
    if (!t->name) return dfx_fail(err, "%s: out of memory", P);
    if (!cJSON_IsObject(item))
        return dfx_fail(err, "%s: tensor '%s': header entry is not an object", P, name);
    const cJSON *dt = cJSON_GetObjectItemCaseSensitive(item, "dtype");
    const cJSON *sh = cJSON_GetObjectItemCaseSensitive(item, "shape");
    const cJSON *off = cJSON_GetObjectItemCaseSensitive(item, "data_offsets");
    if (!cJSON_IsString(dt)) return dfx_fail(err, "%s: tensor '%s': missing dtype", P, name);
    int found = 0;
    for (int d = 0; d < 3; d++)
        if (strcmp(dt->valuestring, dtype_names[d]) == 0) {
            t->dtype = (dfx_dtype)d;
            found = 1;
        }
    if (!found)
        return dfx_fail(err, "%s: tensor '%s': unsupported dtype '%s' (expected F32, F16 or BF16)",
                        P, name, dt->valuestring);
    if (!cJSON_IsArray(sh)) return dfx_fail(err, "%s: tensor '%s': missing shape", P, name);
    int nd = cJSON_GetArraySize(sh);
    if (nd > DFX_ST_MAX_DIMS)
        return dfx_fail(err, "%s: tensor '%s': %d dimensions (at most %d)", P, name, nd,
                        DFX_ST_MAX_DIMS);
    t->ndim = nd;
    uint64_t numel = 1;
    for (int i = 0; i < nd; i++) {
        uint64_t v;
        if (json_uint(cJSON_GetArrayItem(sh, i), &v) != 0 || v > ((uint64_t)1 << 40))
            return dfx_fail(err, "%s: tensor '%s': shape entry %d is not a valid size", P, name,
                            i);
        t->shape[i] = (int64_t)v;
        if (v && numel > ((uint64_t)1 << 60) / v)
            return dfx_fail(err, "%s: tensor '%s': shape too large", P, name);
        numel *= v;
    }
    t->numel = (size_t)numel;
    uint64_t b, e;
    if (!cJSON_IsArray(off) || cJSON_GetArraySize(off) != 2 ||
        json_uint(cJSON_GetArrayItem(off, 0), &b) != 0 ||
        json_uint(cJSON_GetArrayItem(off, 1), &e) != 0)
        return dfx_fail(err, "%s: tensor '%s': data_offsets must be two non-negative integers", P,
                        name);
    if (b > e || e > f->data_len)
        return dfx_fail(err,
                        "%s: tensor '%s': data_offsets [%llu, %llu] lie outside the %zu-byte "
                        "data buffer (truncated file?)",
                        P, name, (unsigned long long)b, (unsigned long long)e, f->data_len);
    if (e - b != numel * dtype_size[t->dtype])
        return dfx_fail(err,
                        "%s: tensor '%s': %llu bytes of data for %llu %s values (expected %llu)",
                        P, name, (unsigned long long)(e - b), (unsigned long long)numel,
                        dtype_names[t->dtype], (unsigned long long)(numel * dtype_size[t->dtype]));
    t->begin = (size_t)b;
    t->end = (size_t)e;
    return 0;
}

static int parse_metadata(dfx_st_file *f, const cJSON *meta, dfx_error *err)
{
    if (!cJSON_IsObject(meta)) return dfx_fail(err, "%s: __metadata__ is not an object", f->path);
    const cJSON *it;
    cJSON_ArrayForEach(it, meta)
    {
        if (!cJSON_IsString(it))
            return dfx_fail(err, "%s: __metadata__ value '%s' is not a string", f->path,
                            it->string);
        /* keys are unique (dfx_json_parse_strict): each is set at most once */
        char **slot = strcmp(it->string, "format") == 0   ? &f->format
                      : strcmp(it->string, "config") == 0 ? &f->config
                                                          : NULL;
        if (!slot) continue;
        free(*slot);
        if (!(*slot = dup_str(it->valuestring))) return dfx_fail(err, "%s: out of memory", f->path);
    }
    return 0;
}

static int cmp_name(const void *a, const void *b)
{
    return strcmp((*(const dfx_st_tensor *const *)a)->name,
                  (*(const dfx_st_tensor *const *)b)->name);
}

static int parse_header(dfx_st_file *f, const char *hdr, size_t len, dfx_error *err)
{
    cJSON *root = dfx_json_parse_strict(hdr, len, 0, f->path, err);
    if (!root) return -1;
    int rc = 0;
    if (!cJSON_IsObject(root)) {
        rc = dfx_fail(err, "%s: the header is not a JSON object", f->path);
        goto done;
    }
    int count = cJSON_GetArraySize(root);
    f->tensors = calloc((size_t)(count ? count : 1), sizeof *f->tensors);
    f->by_name = malloc((size_t)(count ? count : 1) * sizeof *f->by_name);
    if (!f->tensors || !f->by_name) {
        rc = dfx_fail(err, "%s: out of memory", f->path);
        goto done;
    }
    const cJSON *it;
    cJSON_ArrayForEach(it, root)
    {
        if (strcmp(it->string, "__metadata__") == 0) {
            if ((rc = parse_metadata(f, it, err)) != 0) goto done;
            continue;
        }
        dfx_st_tensor *t = &f->tensors[f->n++];
        if ((rc = parse_tensor(f, it, t, err)) != 0) goto done;
    }
    /* names sorted for dfx_st_get; the strict parse refused duplicates */
    for (int i = 0; i < f->n; i++) f->by_name[i] = &f->tensors[i];
    qsort(f->by_name, (size_t)f->n, sizeof *f->by_name, cmp_name);
    for (int i = 1; i < f->n; i++)
        if (strcmp(f->by_name[i - 1]->name, f->by_name[i]->name) == 0) {
            rc = dfx_fail(err, "%s: tensor '%s' appears twice", f->path, f->by_name[i]->name);
            goto done;
        }
    /* No two tensors may share bytes. */
    dfx_st_tensor **order = malloc((size_t)(f->n ? f->n : 1) * sizeof *order);
    if (!order) {
        rc = dfx_fail(err, "%s: out of memory", f->path);
        goto done;
    }
    int m = 0;
    for (int i = 0; i < f->n; i++)
        if (f->tensors[i].end > f->tensors[i].begin) order[m++] = &f->tensors[i];
    qsort(order, (size_t)m, sizeof *order, cmp_begin);
    for (int i = 1; i < m; i++)
        if (order[i]->begin < order[i - 1]->end) {
            rc = dfx_fail(err, "%s: tensors '%s' and '%s' overlap (bytes %zu..%zu and %zu..%zu)",
                          f->path, order[i - 1]->name, order[i]->name, order[i - 1]->begin,
                          order[i - 1]->end, order[i]->begin, order[i]->end);
            break;
        }
    free(order);
done:
    cJSON_Delete(root);
    return rc;
}

/* The whole file, size bytes at p: the length field, the header, the data. */
static int parse_image(dfx_st_file *f, const unsigned char *p, size_t size, dfx_error *err)
{
    const char *path = f->path;
    f->size = size;
    if (size < 8)
        return dfx_fail(err, "%s: not a safetensors file (%zu bytes, too short for a header)",
                        path, size);
    uint64_t n = 0;
    for (int i = 7; i >= 0; i--) n = (n << 8) | p[i];
    if (n > size - 8)
        return dfx_fail(err,
                        "%s: header length %llu exceeds the file size %zu (truncated file, or "
                        "not a safetensors file)",
                        path, (unsigned long long)n, size);
    if (n > DFX_ST_MAX_HEADER || n < 2)
        return dfx_fail(err, "%s: implausible header length %llu", path, (unsigned long long)n);
    f->data = p + 8 + n;
    f->data_len = size - 8 - (size_t)n;
    return parse_header(f, (const char *)p + 8, (size_t)n, err);
}

int dfx_st_open(dfx_st_file *f, const char *path, dfx_error *err)
{
    memset(f, 0, sizeof *f);
    snprintf(f->path, sizeof f->path, "%s", path);
    size_t size = 0;
    int fd = dfx_open_regular(path, "model file", &size, err);
    if (fd < 0) return -1;
    const unsigned char *p = (const unsigned char *)"";
    if (size >= 8) { /* shorter files are refused without mapping them */
        f->map = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (f->map == MAP_FAILED) {
            f->map = NULL;
            int e = errno;
            close(fd);
            return dfx_fail(err, "%s: cannot map the file: %s", path, strerror(e));
        }
        p = f->map;
    }
    close(fd);
    if (parse_image(f, p, size, err) != 0) {
        dfx_st_close(f);
        return -1;
    }
    return 0;
}

int dfx_st_open_mem(dfx_st_file *f, const void *buf, size_t size, const char *name,
                    dfx_error *err)
{
    memset(f, 0, sizeof *f);
    snprintf(f->path, sizeof f->path, "%s", name);
    if (parse_image(f, size ? buf : "", size, err) != 0) {
        dfx_st_close(f);
        return -1;
    }
    return 0;
}

void dfx_st_close(dfx_st_file *f)
{
    if (f->map) munmap(f->map, f->size);
    for (int i = 0; i < f->n; i++) free(f->tensors[i].name);
    free(f->tensors);
    free(f->by_name);
    free(f->format);
    free(f->config);
    char path[sizeof f->path];
    memcpy(path, f->path, sizeof path);
    memset(f, 0, sizeof *f);
    memcpy(f->path, path, sizeof path);
}

static void shape_str(char *buf, size_t cap, int ndim, const int64_t *shape)
{
    size_t o = (size_t)snprintf(buf, cap, "[");
    for (int i = 0; i < ndim && o < cap; i++)
        o += (size_t)snprintf(buf + o, cap - o, "%s%lld", i ? ", " : "", (long long)shape[i]);
    if (o < cap) snprintf(buf + o, cap - o, "]");
}

static int cmp_key_name(const void *key, const void *elem)
{
    return strcmp((const char *)key, (*(const dfx_st_tensor *const *)elem)->name);
}

const dfx_st_tensor *dfx_st_get(dfx_st_file *f, const char *name, int ndim,
                                const int64_t *shape, dfx_error *err)
{
    dfx_st_tensor **hit =
        f->n ? bsearch(name, f->by_name, (size_t)f->n, sizeof *f->by_name, cmp_key_name) : NULL;
    if (!hit) {
        dfx_fail(err, "%s: missing tensor '%s'", f->path, name);
        return NULL;
    }
    dfx_st_tensor *t = *hit;
    int ok = ndim < 0 || t->ndim == ndim;
    for (int d = 0; ok && ndim > 0 && d < ndim; d++) ok = t->shape[d] == shape[d];
    if (!ok) {
        char want[128], got[128];
        shape_str(want, sizeof want, ndim, shape);
        shape_str(got, sizeof got, t->ndim, t->shape);
        dfx_fail(err, "%s: tensor '%s' has shape %s, the config implies %s", f->path, name, got,
                 want);
        return NULL;
    }
    t->used = 1;
    return t;
}

int dfx_st_has(const dfx_st_file *f, const char *name)
{
    return f->n && bsearch(name, f->by_name, (size_t)f->n, sizeof *f->by_name, cmp_key_name);
}

void dfx_st_to_f32(const dfx_st_file *f, const dfx_st_tensor *t, float *dst)
{
    const unsigned char *src = f->data + t->begin;
    for (size_t i = 0; i < t->numel; i++) {
        if (t->dtype == DFX_F32) {
            uint32_t u = (uint32_t)src[4 * i] | (uint32_t)src[4 * i + 1] << 8 |
                         (uint32_t)src[4 * i + 2] << 16 | (uint32_t)src[4 * i + 3] << 24;
            dst[i] = dfx_bits_to_f32(u);
        } else {
            uint16_t h = (uint16_t)(src[2 * i] | src[2 * i + 1] << 8);
            dst[i] = t->dtype == DFX_F16 ? dfx_f16_to_f32(h) : dfx_bf16_to_f32(h);
        }
    }
}

int dfx_st_check_all_used(const dfx_st_file *f, dfx_error *err)
{
    for (int i = 0; i < f->n; i++)
        if (!f->tensors[i].used)
            return dfx_fail(err, "%s: unknown tensor '%s' (not part of this model kind)",
                            f->path, f->tensors[i].name);
    return 0;
}

int dfx_st_write(const char *path, const char *config, const dfx_st_out *t, int n,
                 dfx_error *err)
{
    cJSON *root = cJSON_CreateObject();
    cJSON *meta = cJSON_AddObjectToObject(root, "__metadata__");
    cJSON_AddStringToObject(meta, "format", "difflux");
    if (config) cJSON_AddStringToObject(meta, "config", config);
    size_t off = 0;
    for (int i = 0; i < n; i++) {
        size_t numel = 1;
        for (int d = 0; d < t[i].ndim; d++) numel *= (size_t)t[i].shape[d];
        cJSON *e = cJSON_AddObjectToObject(root, t[i].name);
        cJSON_AddStringToObject(e, "dtype", dtype_names[t[i].dtype]);
        cJSON *sh = cJSON_AddArrayToObject(e, "shape");
        for (int d = 0; d < t[i].ndim; d++)
            cJSON_AddItemToArray(sh, cJSON_CreateNumber((double)t[i].shape[d]));
        cJSON *o = cJSON_AddArrayToObject(e, "data_offsets");
        cJSON_AddItemToArray(o, cJSON_CreateNumber((double)off));
        off += numel * dtype_size[t[i].dtype];
        cJSON_AddItemToArray(o, cJSON_CreateNumber((double)off));
    }
    char *hdr = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    if (!hdr) return dfx_fail(err, "%s: out of memory", path);
    size_t hlen = strlen(hdr), padded = (hlen + 7) / 8 * 8;
    dfx_atomic a;
    if (dfx_atomic_open(&a, path, err) != 0) {
        free(hdr);
        return -1;
    }
    unsigned char len8[8];
    for (int i = 0; i < 8; i++) len8[i] = (unsigned char)((uint64_t)padded >> (8 * i));
    fwrite(len8, 1, 8, a.fp);
    fwrite(hdr, 1, hlen, a.fp);
    for (size_t i = hlen; i < padded; i++) fputc(' ', a.fp);
    free(hdr);
    for (int i = 0; i < n; i++) {
        size_t numel = 1;
        for (int d = 0; d < t[i].ndim; d++) numel *= (size_t)t[i].shape[d];
        for (size_t j = 0; j < numel; j++) {
            unsigned char b[4];
            if (t[i].dtype == DFX_F32) {
                uint32_t u = dfx_f32_to_bits(t[i].data[j]);
                for (int k = 0; k < 4; k++) b[k] = (unsigned char)(u >> (8 * k));
                fwrite(b, 1, 4, a.fp);
            } else {
                uint16_t h = t[i].dtype == DFX_F16 ? dfx_f32_to_f16(t[i].data[j])
                                                   : dfx_f32_to_bf16(t[i].data[j]);
                b[0] = (unsigned char)h;
                b[1] = (unsigned char)(h >> 8);
                fwrite(b, 1, 2, a.fp);
            }
        }
    }
    return dfx_atomic_commit(&a, err);
}
