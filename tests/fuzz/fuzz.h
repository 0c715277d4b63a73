/* Shared by the fuzz targets: each defines LLVMFuzzerTestOneInput, built
 * either with libFuzzer (-DDIFFLUX_FUZZ=ON, clang) or with replay.c, which
 * feeds it the files of a corpus (the regression test, any compiler). */
#ifndef DFX_FUZZ_H
#define DFX_FUZZ_H

#define _GNU_SOURCE
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* The readers take a path: the input goes into one memory file, reopened
 * by every call through /proc/self/fd (a regular file, as they require). */
static inline const char *fuzz_as_file(const uint8_t *data, size_t size)
{
    static int fd = -1;
    static char path[64];
    if (fd < 0) {
        fd = memfd_create("difflux-fuzz", 0);
        if (fd < 0) {
            perror("memfd_create");
            abort();
        }
        snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    }
    if (ftruncate(fd, 0) != 0 || (size && pwrite(fd, data, size, 0) != (ssize_t)size)) {
        perror("memfd write");
        abort();
    }
    return path;
}

#endif
