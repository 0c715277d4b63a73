#define _POSIX_C_SOURCE 200809L
#include "io/fileio.h"
#include "core/error.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define TMP_TAG ".difflux-tmp-"

/* The registry of live temporaries. A signal handler reads it (on any
 * thread), so a slot's name is written before `live` is set and `live` is
 * cleared before the slot is reused; fences keep that order. */
enum { SLOTS = 32 };
typedef struct tmp_slot {
    volatile sig_atomic_t live; /* tmp may name a file of ours */
    int pending;                /* finished, waiting for dfx_outputs_commit */
    int companion;              /* another writer's temporary: removed, never renamed */
    char tmp[4096];
    char path[4096];
} tmp_slot;
static tmp_slot slots[SLOTS];
static int grouping;
static volatile sig_atomic_t committing, deferred_sig;

static int slot_get(const char *path, dfx_error *err)
{
    for (int i = 0; i < SLOTS; i++)
        if (!slots[i].live && !slots[i].pending) {
            slots[i].companion = 0;
            return i;
        }
    return dfx_fail(err, "cannot write '%s': more than %d output files at once", path, SLOTS);
}

static void slot_release(int i)
{
    if (i < 0 || i >= SLOTS) return;
    slots[i].live = 0;
    atomic_thread_fence(memory_order_seq_cst);
    slots[i].pending = 0;
    slots[i].companion = 0;
}

/* dir/.NAME.difflux-tmp-PID-XXXXXX for dir/NAME */
static int tmp_name(char *buf, size_t cap, const char *path)
{
    const char *slash = strrchr(path, '/');
    int dlen = slash ? (int)(slash - path + 1) : 0;
    int n = snprintf(buf, cap, "%.*s.%s" TMP_TAG "%ld-XXXXXX", dlen, path, path + dlen,
                     (long)getpid());
    return n > 0 && (size_t)n < cap ? 0 : -1;
}

int dfx_tmp_clean_stale(const char *path)
{
    char dir[4096];
    const char *slash = strrchr(path, '/');
    if (slash) {
        size_t len = (size_t)(slash - path);
        if (len >= sizeof dir) return 0;
        memcpy(dir, path, len);
        dir[len] = 0;
        if (len == 0) snprintf(dir, sizeof dir, "/");
    } else {
        snprintf(dir, sizeof dir, ".");
    }
    DIR *d = opendir(dir);
    if (!d) return 0;
    int removed = 0;
    const pid_t self = getpid();
    struct dirent *e;
    while ((e = readdir(d))) {
        const char *tag = e->d_name[0] == '.' ? strstr(e->d_name, TMP_TAG) : NULL;
        if (!tag) continue;
        char *end;
        long pid = strtol(tag + strlen(TMP_TAG), &end, 10);
        if (end == tag + strlen(TMP_TAG) || *end != '-' || pid <= 0 || pid == (long)self)
            continue;
        if (kill((pid_t)pid, 0) == 0 || errno != ESRCH) continue; /* alive, or not ours to judge */
        char full[8192];
        struct stat st;
        snprintf(full, sizeof full, "%s/%s", dir, e->d_name);
        if (lstat(full, &st) == 0 && S_ISREG(st.st_mode) && unlink(full) == 0) removed++;
    }
    closedir(d);
    return removed;
}

int dfx_atomic_open(dfx_atomic *a, const char *path, dfx_error *err)
{
    memset(a, 0, sizeof *a);
    a->slot = -1;
    if (!path || !*path) return dfx_fail(err, "empty output file name");
    size_t len = strlen(path);
    if (path[len - 1] == '/') return dfx_fail(err, "cannot write '%s': it names a directory", path);
    if (len + 64 >= sizeof a->tmp) return dfx_fail(err, "%s: file name too long", path);
    dfx_tmp_clean_stale(path);
    int s = slot_get(path, err);
    if (s < 0) return -1;
    tmp_slot *t = &slots[s];
    snprintf(t->path, sizeof t->path, "%s", path);
    if (tmp_name(t->tmp, sizeof t->tmp, path)) return dfx_fail(err, "%s: file name too long", path);
    /* registered before it exists: a signal now unlinks at most a name
     * that mkstemp is still filling in */
    atomic_thread_fence(memory_order_seq_cst);
    t->live = 1;
    int fd = mkstemp(t->tmp);
    if (fd < 0) {
        int e = errno;
        slot_release(s);
        return dfx_fail(err, "cannot write '%s': %s", path, strerror(e));
    }
    snprintf(a->path, sizeof a->path, "%s", path);
    snprintf(a->tmp, sizeof a->tmp, "%s", t->tmp);
    a->slot = s;
    a->fp = fdopen(fd, "wb");
    if (!a->fp) {
        int e = errno;
        close(fd);
        unlink(a->tmp);
        slot_release(s);
        a->slot = -1;
        return dfx_fail(err, "cannot write '%s': %s", path, strerror(e));
    }
    return 0;
}

/* mkstemp creates 0600; give the file the usual permissions. */
static void usual_mode(const char *file)
{
    mode_t mask = umask(0);
    umask(mask);
    chmod(file, 0666 & ~mask);
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
        slot_release(a->slot);
        return dfx_fail(err, "error while writing '%s': %s", a->path, strerror(e));
    }
    usual_mode(a->tmp);
    if (grouping && a->slot >= 0) {
        slots[a->slot].pending = 1; /* renamed with the others */
        return 0;
    }
    int rc = 0;
    if (rename(a->tmp, a->path) != 0) {
        e = errno;
        unlink(a->tmp);
        rc = dfx_fail(err, "cannot rename to '%s': %s", a->path, strerror(e));
    }
    slot_release(a->slot);
    return rc;
}

void dfx_atomic_abort(dfx_atomic *a)
{
    if (a->fp) fclose(a->fp);
    a->fp = NULL;
    if (a->tmp[0]) unlink(a->tmp);
    slot_release(a->slot);
    a->slot = -1;
}

void dfx_outputs_begin(void)
{
    grouping = 1;
}

int dfx_outputs_commit(dfx_error *err)
{
    committing = 1;
    atomic_thread_fence(memory_order_seq_cst);
    int rc = 0;
    for (int i = 0; i < SLOTS; i++) {
        tmp_slot *t = &slots[i];
        if (!t->pending) continue;
        if (rc == 0 && rename(t->tmp, t->path) != 0)
            rc = dfx_fail(err, "cannot rename to '%s': %s (outputs renamed before it stay)",
                          t->path, strerror(errno));
        if (rc != 0) unlink(t->tmp);
        slot_release(i);
    }
    grouping = 0;
    committing = 0;
    atomic_thread_fence(memory_order_seq_cst);
    if (deferred_sig) {
        int sig = deferred_sig;
        deferred_sig = 0;
        raise(sig);
    }
    return rc;
}

void dfx_outputs_abort(void)
{
    for (int i = 0; i < SLOTS; i++)
        if (slots[i].pending) {
            unlink(slots[i].tmp);
            slot_release(i);
        }
    grouping = 0;
}

int dfx_outputs_adopt(const char *path, char *tmp, size_t cap, dfx_error *err)
{
    dfx_atomic a;
    if (dfx_atomic_open(&a, path, err)) return -1;
    fclose(a.fp); /* the writer replaces the empty file */
    int s = a.slot, c = slot_get(path, err);
    if (c < 0 || snprintf(tmp, cap, "%s", a.tmp) >= (int)cap) {
        unlink(a.tmp);
        slot_release(s);
        return c < 0 ? -1 : dfx_fail(err, "%s: file name too long", path);
    }
    snprintf(slots[c].tmp, sizeof slots[c].tmp, "%.4000s.tmp%ld", a.tmp, (long)getpid());
    slots[c].companion = 1;
    atomic_thread_fence(memory_order_seq_cst);
    slots[c].live = 1;
    return 0;
}

int dfx_outputs_adopt_done(const char *tmp, int ok, dfx_error *err)
{
    int s = -1;
    for (int i = 0; i < SLOTS; i++) {
        if (!slots[i].live || strcmp(slots[i].tmp, tmp) != 0) continue;
        s = i;
        char comp[sizeof slots[i].tmp + 32];
        snprintf(comp, sizeof comp, "%s.tmp%ld", tmp, (long)getpid());
        for (int j = 0; j < SLOTS; j++)
            if (slots[j].live && slots[j].companion && strcmp(slots[j].tmp, comp) == 0) {
                unlink(slots[j].tmp); /* left only by a failed writer */
                slot_release(j);
            }
    }
    if (s < 0) return dfx_fail(err, "%s: not an adopted temporary", tmp);
    dfx_atomic a = {NULL, s, {0}, {0}};
    snprintf(a.tmp, sizeof a.tmp, "%s", slots[s].tmp);
    snprintf(a.path, sizeof a.path, "%s", slots[s].path);
    if (!ok) {
        dfx_atomic_abort(&a);
        return -1;
    }
    usual_mode(a.tmp);
    if (grouping) {
        slots[s].pending = 1;
        return 0;
    }
    int rc = 0;
    if (rename(a.tmp, a.path) != 0) {
        rc = dfx_fail(err, "cannot rename to '%s': %s", a.path, strerror(errno));
        unlink(a.tmp);
    }
    slot_release(s);
    return rc;
}

int dfx_tmp_signal(int sig)
{
    if (committing) {
        deferred_sig = sig;
        return 0;
    }
    for (int i = 0; i < SLOTS; i++)
        if (slots[i].live) unlink(slots[i].tmp);
    return 1;
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

/* ------------------------------------------------------------- reading */

int dfx_is_dir(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

char *dfx_read_text(const char *file, const char *what, size_t max, size_t *len, dfx_error *err)
{
    size_t size = 0;
    int fd = dfx_open_regular(file, what, &size, err);
    if (fd < 0) return NULL;
    if (size > max) {
        close(fd);
        dfx_fail(err, "%s: %zu bytes, more than the %zu a %s may have", file, size, max,
                 what ? what : "file");
        return NULL;
    }
    char *buf = malloc(size + 1);
    size_t got = 0;
    while (buf && got < size) {
        ssize_t r = read(fd, buf + got, size - got);
        if (r <= 0) break;
        got += (size_t)r;
    }
    close(fd);
    if (!buf || got != size) {
        free(buf);
        dfx_fail(err, "%s: cannot read", file);
        return NULL;
    }
    buf[size] = 0;
    if (len) *len = size;
    return buf;
}

int dfx_open_regular(const char *file, const char *what, size_t *size, dfx_error *err)
{
    /* O_NONBLOCK: opening a FIFO without a writer must not wait for one */
    int fd = open(file, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0 && !what) return dfx_fail(err, "%s: cannot open: %s", file, strerror(errno));
    if (fd < 0) return dfx_fail(err, "cannot open %s '%s': %s", what, file, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int e = errno;
        close(fd);
        return dfx_fail(err, "%s: cannot stat: %s", file, strerror(e));
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        const char *kind = S_ISFIFO(st.st_mode)  ? "a FIFO"
                           : S_ISDIR(st.st_mode) ? "a directory"
                           : S_ISCHR(st.st_mode) ? "a character device"
                           : S_ISBLK(st.st_mode) ? "a block device"
                           : S_ISSOCK(st.st_mode) ? "a socket"
                                                  : "not a plain file";
        return dfx_fail(err, "%s: not a regular file (%s)", file, kind);
    }
    int fl = fcntl(fd, F_GETFL);
    if (fl != -1) fcntl(fd, F_SETFL, fl & ~O_NONBLOCK);
    if (size) *size = (size_t)st.st_size;
    return fd;
}
