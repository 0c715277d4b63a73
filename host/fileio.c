#define _POSIX_C_SOURCE 200809L
#include "fileio.h"
#include "error.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int dfx_atomic_open(dfx_atomic *a, const char *path, dfx_error *err)
{
    memset(a, 0, sizeof *a);
    if (!path || !*path) return dfx_fail(err, "empty output file name");
    if (strlen(path) + 16 >= sizeof a->tmp) return dfx_fail(err, "%s: file name too long", path);
    snprintf(a->path, sizeof a->path, "%s", path);
    snprintf(a->tmp, sizeof a->tmp, "%s.tmpXXXXXX", path);
    int fd = mkstemp(a->tmp);
    if (fd < 0) return dfx_fail(err, "cannot write '%s': %s", path, strerror(errno));
    a->fp = fdopen(fd, "wb");
    if (!a->fp) {
        int e = errno;
        close(fd);
        unlink(a->tmp);
        return dfx_fail(err, "cannot write '%s': %s", path, strerror(e));
    }
    return 0;
}

int dfx_atomic_commit(dfx_atomic *a, dfx_error *err)
{
    int bad = ferror(a->fp);
    int e = errno;
    if (fflush(a->fp) != 0) {
        bad = 1;
        e = errno;
    }
    if (fclose(a->fp) != 0 && !bad) {
        bad = 1;
        e = errno;
    }
    a->fp = NULL;
    if (bad) {
        unlink(a->tmp);
        return dfx_fail(err, "error while writing '%s': %s", a->path, strerror(e));
    }
    /* mkstemp creates 0600; give the file the usual permissions. */
    mode_t mask = umask(0);
    umask(mask);
    chmod(a->tmp, 0666 & ~mask);
    if (rename(a->tmp, a->path) != 0) {
        e = errno;
        unlink(a->tmp);
        return dfx_fail(err, "cannot rename to '%s': %s", a->path, strerror(e));
    }
    return 0;
}

void dfx_atomic_abort(dfx_atomic *a)
{
    if (a->fp) fclose(a->fp);
    a->fp = NULL;
    if (a->tmp[0]) unlink(a->tmp);
}

int dfx_write_text(const char *file, const char *text, dfx_error *err)
{
    dfx_atomic a;
    if (dfx_atomic_open(&a, file, err)) return -1;
    if (fputs(text, a.fp) < 0) {
        dfx_atomic_abort(&a);
        return dfx_fail(err, "%s: write failed", file);
    }
    return dfx_atomic_commit(&a, err);
}
