/*
 * safetensors files (the model format, models/FORMAT.md): a strict,
 * memory-mapped reader that never trusts the file, and a writer.
 *
 * Layout: 8-byte little-endian header length N, N bytes of JSON
 * {"__metadata__": {...strings...}, "<tensor>": {"dtype", "shape",
 * "data_offsets": [begin, end]}, ...}, then the data buffer that the
 * offsets index (relative to its start).
 */
#ifndef DFX_SAFETENSORS_H
#define DFX_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "difflux.h"

#define DFX_ST_MAX_DIMS 8
#define DFX_ST_MAX_HEADER (64u << 20)

typedef enum { DFX_F32 = 0, DFX_F16, DFX_BF16 } dfx_dtype;

typedef struct dfx_st_tensor {
    char *name;
    dfx_dtype dtype;
    int ndim;
    int64_t shape[DFX_ST_MAX_DIMS];
    size_t begin, end; /* byte offsets into the data buffer */
    size_t numel;
    int used;
} dfx_st_tensor;

typedef struct dfx_st_file {
    char path[1024];
    void *map;
    size_t size;
    const unsigned char *data; /* the data buffer */
    size_t data_len;
    int n;
    dfx_st_tensor *tensors;    /* in header order */
    dfx_st_tensor **by_name;   /* the same, sorted by name */
    char *format; /* __metadata__["format"], or NULL */
    char *config; /* __metadata__["config"], or NULL */
} dfx_st_file;

int dfx_st_open(dfx_st_file *f, const char *path, dfx_error *err);
/* The same checks on a file image in memory (size bytes at buf, which must
 * outlive f); `name` stands for the file in messages. dfx_st_open maps the
 * file and parses it through the same code. */
int dfx_st_open_mem(dfx_st_file *f, const void *buf, size_t size, const char *name,
                    dfx_error *err);
void dfx_st_close(dfx_st_file *f);
/* Finds a tensor, checks its shape (ndim < 0: any shape) and marks it used. */
const dfx_st_tensor *dfx_st_get(dfx_st_file *f, const char *name, int ndim,
                                const int64_t *shape, dfx_error *err);
/* 1 if the file has a tensor of that name (nothing is marked used). */
int dfx_st_has(const dfx_st_file *f, const char *name);
/* Converts a tensor's values to float32. */
void dfx_st_to_f32(const dfx_st_file *f, const dfx_st_tensor *t, float *dst);
/* Fails naming the first tensor no loader asked for. */
int dfx_st_check_all_used(const dfx_st_file *f, dfx_error *err);
const char *dfx_dtype_name(dfx_dtype d);

typedef struct dfx_st_out {
    const char *name;
    dfx_dtype dtype; /* storage type; data are given as float32 */
    int ndim;
    int64_t shape[DFX_ST_MAX_DIMS];
    const float *data;
} dfx_st_out;

/* Writes tensors with __metadata__ {"format": "difflux", "config": config}. */
int dfx_st_write(const char *path, const char *config, const dfx_st_out *t, int n,
                 dfx_error *err);

/* Strict JSON (models/FORMAT.md): len bytes of text, refused with a message
 * naming `file` unless they are one JSON value with no duplicate key in any
 * object, no \u0000 and no control byte in keys, nothing between tokens but
 * JSON whitespace, and after the value only spaces (config = 0: the header,
 * which must also be an object) or whitespace (config = 1: the config,
 * whose numbers must also be finite and survive conversion to float32). */
struct cJSON;
struct cJSON *dfx_json_parse_strict(const char *text, size_t len, int config, const char *file,
                                    dfx_error *err);

#endif
