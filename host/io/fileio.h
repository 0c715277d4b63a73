/* Files written atomically: to a hidden temporary beside the target,
 * `.NAME.difflux-tmp-PID-XXXXXX`, renamed into place only when everything
 * was written, removed on failure. The live temporaries are kept in a
 * registry that a signal handler can empty (dfx_tmp_signal); temporaries
 * of processes that no longer exist (killed by SIGKILL) are removed the
 * next time a file is written in their directory. Between
 * dfx_outputs_begin and dfx_outputs_commit the finished files wait under
 * their temporary names and are renamed together at the end, or not at
 * all, so a run's PNG, .npy and JSON always belong together.
 * Not thread-safe: one thread writes the outputs. */
#ifndef DFX_FILEIO_H
#define DFX_FILEIO_H

#include <stdio.h>

#include "difflux.h"

typedef struct dfx_atomic {
    FILE *fp;
    int slot; /* in the registry of live temporaries */
    char tmp[4096];
    char path[4096];
} dfx_atomic;

int dfx_atomic_open(dfx_atomic *a, const char *path, dfx_error *err);
/* Flushes, closes and renames (inside dfx_outputs_begin .. commit: keeps
 * the finished temporary for dfx_outputs_commit); on any error removes the
 * temporary file. */
int dfx_atomic_commit(dfx_atomic *a, dfx_error *err);
void dfx_atomic_abort(dfx_atomic *a);

/* A run's outputs, renamed into place together. begin: from now on
 * dfx_atomic_commit defers the rename. commit: renames every deferred file
 * (SIGINT/SIGTERM wait until it is done); on an error the files not yet
 * renamed are removed. abort: removes them all. Both end the group. */
void dfx_outputs_begin(void);
int dfx_outputs_commit(dfx_error *err);
void dfx_outputs_abort(void);
/* A file that another writer (PLplot) fills: *tmp gets a registered
 * temporary name for `path` that the writer may create (and, with its own
 * temporary, `tmp` + ".tmp<pid>", which is registered too); the file is then
 * renamed with the group, or, outside a group, by dfx_outputs_adopt_done. */
int dfx_outputs_adopt(const char *path, char *tmp, size_t cap, dfx_error *err);
int dfx_outputs_adopt_done(const char *tmp, int ok, dfx_error *err);

/* For a SIGINT/SIGTERM handler (async-signal-safe): removes every live
 * temporary and returns 1; or returns 0 while dfx_outputs_commit is
 * renaming the group, which then raises `sig` again when it is done. */
int dfx_tmp_signal(int sig);

/* Removes temporaries of processes that no longer exist from the
 * directory of `path` (done by dfx_atomic_open); the number removed. */
int dfx_tmp_clean_stale(const char *path);

/* Checks that a PNG grid of these images can be written (1, 3 or 4
 * channels, layout in range, at most 65535 pixels a side), without any
 * pixels: 0, or -1 with a message naming the file (host/io/image.c). */
int dfx_png_grid_check(const char *file, int n, int channels, int height, int width,
                       const dfx_grid_layout *layout, dfx_error *err);

/* Opens `file` for reading only if it is a regular file, without blocking
 * on a FIFO or device: the descriptor and its size, or -1 with a message
 * ("cannot open WHAT 'FILE': ..." with `what` the file's role, "model
 * file"; "FILE: cannot open: ..." when what is NULL). */
int dfx_open_regular(const char *file, const char *what, size_t *size, dfx_error *err);
/* The whole of a regular file of at most `max` bytes, NUL-terminated
 * (malloc'd), its length in *len; NULL with a message. */
char *dfx_read_text(const char *file, const char *what, size_t max, size_t *len, dfx_error *err);
/* 1 if path names a directory (or a link to one). */
int dfx_is_dir(const char *path);

#endif
