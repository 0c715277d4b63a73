/* The model loader on any bytes: the safetensors reader, the config and
 * the loader of every kind in host/model/model.c's table, from memory.
 * A model that loads is described and freed. */
#include "fuzz.h"

#include "difflux.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static dfx_backend *be;
    dfx_error err = {{0}};
    if (!be && !(be = dfx_backend_create("cpu", 1, &err))) abort();
    dfx_model *m = dfx_model_load_mem(data, size, "fuzz.safetensors", be, &err);
    if (m) {
        char buf[8192];
        dfx_model_describe(m, buf, sizeof buf);
        dfx_model_free(m);
    } else if (!err.msg[0]) {
        abort(); /* every refusal has a message */
    }
    return 0;
}
