#define _POSIX_C_SOURCE 200809L
#include "safetensors.h"
#include "error.h"
#include "fileio.h"
#include "half.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
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
        if (strcmp(it->string, "format") == 0) f->format = dup_str(it->valuestring);
        if (strcmp(it->string, "config") == 0) f->config = dup_str(it->valuestring);
    }
    return 0;
}

static int parse_header(dfx_st_file *f, const char *hdr, size_t len, dfx_error *err)
{
    cJSON *root = cJSON_ParseWithLength(hdr, len);
    if (!root) {
        const char *at = cJSON_GetErrorPtr();
        long pos = (at && at >= hdr && at <= hdr + len) ? (long)(at - hdr) : -1;
        return dfx_fail(err, "%s: the header is not valid JSON (error near byte %ld)", f->path,
                        pos);
    }
    int rc = 0;
    if (!cJSON_IsObject(root)) {
        rc = dfx_fail(err, "%s: the header is not a JSON object", f->path);
        goto done;
    }
    int count = cJSON_GetArraySize(root);
    f->tensors = calloc((size_t)(count ? count : 1), sizeof *f->tensors);
    if (!f->tensors) {
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
        for (int i = 0; i < f->n; i++)
            if (strcmp(f->tensors[i].name, it->string) == 0) {
                rc = dfx_fail(err, "%s: tensor '%s' appears twice", f->path, it->string);
                goto done;
            }
        dfx_st_tensor *t = &f->tensors[f->n++];
        if ((rc = parse_tensor(f, it, t, err)) != 0) goto done;
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

int dfx_st_open(dfx_st_file *f, const char *path, dfx_error *err)
{
    memset(f, 0, sizeof *f);
    snprintf(f->path, sizeof f->path, "%s", path);
    int fd = open(path, O_RDONLY);
    if (fd < 0) return dfx_fail(err, "cannot open model file '%s': %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return dfx_fail(err, "%s: not a regular file", path);
    }
    f->size = (size_t)st.st_size;
    if (f->size < 8) {
        close(fd);
        return dfx_fail(err, "%s: not a safetensors file (%zu bytes, too short for a header)",
                        path, f->size);
    }
    f->map = mmap(NULL, f->size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (f->map == MAP_FAILED) {
        f->map = NULL;
        return dfx_fail(err, "%s: cannot map the file: %s", path, strerror(errno));
    }
    const unsigned char *p = f->map;
    uint64_t n = 0;
    for (int i = 7; i >= 0; i--) n = (n << 8) | p[i];
    if (n > f->size - 8) {
        dfx_st_close(f);
        return dfx_fail(err,
                        "%s: header length %llu exceeds the file size %zu (truncated file, or "
                        "not a safetensors file)",
                        path, (unsigned long long)n, f->size);
    }
    if (n > DFX_ST_MAX_HEADER || n < 2) {
        dfx_st_close(f);
        return dfx_fail(err, "%s: implausible header length %llu", path, (unsigned long long)n);
    }
    f->data = p + 8 + n;
    f->data_len = f->size - 8 - (size_t)n;
    if (parse_header(f, (const char *)p + 8, (size_t)n, err) != 0) {
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

const dfx_st_tensor *dfx_st_get(dfx_st_file *f, const char *name, int ndim,
                                const int64_t *shape, dfx_error *err)
{
    for (int i = 0; i < f->n; i++) {
        dfx_st_tensor *t = &f->tensors[i];
        if (strcmp(t->name, name) != 0) continue;
        int ok = ndim < 0 || t->ndim == ndim;
        for (int d = 0; ok && ndim > 0 && d < ndim; d++) ok = t->shape[d] == shape[d];
        if (!ok) {
            char want[128], got[128];
            shape_str(want, sizeof want, ndim, shape);
            shape_str(got, sizeof got, t->ndim, t->shape);
            dfx_fail(err, "%s: tensor '%s' has shape %s, the config implies %s", f->path, name,
                     got, want);
            return NULL;
        }
        t->used = 1;
        return t;
    }
    dfx_fail(err, "%s: missing tensor '%s'", f->path, name);
    return NULL;
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
