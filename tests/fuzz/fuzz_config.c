/* The config parser on any text: dfx_config_parse itself, then the same
 * text as the config of a file without tensors, which reaches the kinds'
 * own sections (unet, classifier, gmm) before the first missing tensor. */
#include "fuzz.h"

#include "model/model.h"
#include "io/safetensors.h"

#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static dfx_backend *be;
    dfx_error err = {{0}};
    if (!be && !(be = dfx_backend_create("cpu", 1, &err))) abort();
    char *text = malloc(size + 1);
    memcpy(text, data, size);
    text[size] = 0;
    dfx_model_config c;
    if (dfx_config_parse(&c, text, "fuzz", &err) == 0) dfx_config_free(&c);
    else if (!err.msg[0]) abort();

    cJSON *h = cJSON_CreateObject();
    cJSON *md = cJSON_AddObjectToObject(h, "__metadata__");
    cJSON_AddStringToObject(md, "format", "difflux");
    cJSON_AddStringToObject(md, "config", text);
    char *ht = cJSON_PrintUnformatted(h);
    cJSON_Delete(h);
    size_t hl = strlen(ht);
    uint8_t *file = malloc(8 + hl);
    for (int i = 0; i < 8; i++) file[i] = (uint8_t)((uint64_t)hl >> (8 * i));
    memcpy(file + 8, ht, hl);
    err.msg[0] = 0;
    dfx_model *m = dfx_model_load_mem(file, 8 + hl, "fuzz", be, &err);
    if (m) dfx_model_free(m);
    else if (!err.msg[0]) abort();
    free(file);
    free(ht);
    free(text);
    return 0;
}
