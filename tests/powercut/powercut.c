/*
 * powercut.c: an LD_PRELOAD shim that lets the crash test simulate a power cut, not
 * just a process crash. A SIGKILL keeps everything the process wrote in the kernel's
 * page cache; a power cut loses whatever was not yet made durable. This shim records,
 * for every write or truncation of a file under $POWERCUT_DIR, the bytes it overwrote
 * (an undo log in $POWERCUT_LOG), and records every fsync/fdatasync of such a file.
 * After the SIGKILL the test replays the undo log backwards for each file from its
 * end to that file's last fsync/fdatasync, leaving each file exactly as durable storage
 * would have it under the pessimistic model "nothing unsynced survives".
 *
 * The undo log is the same for every mode of the test: FLEETGROUPS_CRASH_POWERCUT=reorder
 * replays it into each file's synced image in memory and then keeps or undoes each
 * unsynced 4 KiB page at random instead of undoing every unsynced write (crash.rs).
 *
 * sync_file_range (what sled 0.34.7's flush ends in) is deliberately NOT a sync here:
 * it flushes neither the drive cache nor file metadata. Directory operations (create,
 * rename, unlink) are not simulated; see docs/design/store.md "Durability and power loss".
 *
 * Only the calls intercepted below are seen. Not recorded, so never undone:
 * copy_file_range, sendfile, fallocate (a size it sets stays), pwritev2 and io_uring
 * writes, stores through mmap (msync is not a sync here). The other way round, writes
 * through O_SYNC/O_DSYNC descriptors are recorded but their implicit sync is not: they
 * are durable on return yet undone like any unsynced write until the file's next
 * fsync/fdatasync. A write path that uses any of these needs the shim extended first.
 *
 * Build: cc -shared -fPIC -O2 -o powercut.so powercut.c -ldl
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <unistd.h>

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static int log_fd = -1;
static const char *dir;
static size_t dir_len;

static ssize_t (*real_write)(int, const void *, size_t);
static ssize_t (*real_pwrite64)(int, const void *, size_t, off64_t);
static ssize_t (*real_writev)(int, const struct iovec *, int);
static ssize_t (*real_pwritev64)(int, const struct iovec *, int, off64_t);
static int (*real_ftruncate64)(int, off64_t);
static int (*real_fsync)(int);
static int (*real_fdatasync)(int);

static void init(void) {
    static int done;
    if (done) return;
    real_write = dlsym(RTLD_NEXT, "write");
    real_pwrite64 = dlsym(RTLD_NEXT, "pwrite64");
    real_writev = dlsym(RTLD_NEXT, "writev");
    real_pwritev64 = dlsym(RTLD_NEXT, "pwritev64");
    real_ftruncate64 = dlsym(RTLD_NEXT, "ftruncate64");
    real_fsync = dlsym(RTLD_NEXT, "fsync");
    real_fdatasync = dlsym(RTLD_NEXT, "fdatasync");
    dir = getenv("POWERCUT_DIR");
    dir_len = dir ? strlen(dir) : 0;
    const char *log = getenv("POWERCUT_LOG");
    if (log && dir) {
        int (*real_open)(const char *, int, ...) = dlsym(RTLD_NEXT, "open");
        log_fd = real_open(log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    }
    done = 1;
}

/* The path of a tracked file behind fd, or 0. */
static int tracked(int fd, char *path, size_t cap) {
    if (log_fd < 0 || fd == log_fd) return 0;
    char link[64];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, path, cap - 1);
    if (n <= 0) return 0;
    path[n] = 0;
    if ((size_t)n < dir_len || strncmp(path, dir, dir_len) != 0) return 0;
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) return 0;
    return 1;
}

static void put(const void *p, size_t n) {
    const char *c = p;
    while (n > 0) {
        ssize_t w = real_write(log_fd, c, n);
        if (w <= 0) { if (errno == EINTR) continue; abort(); }
        c += w; n -= (size_t)w;
    }
}

/* Record kind K ('W' write, 'T' truncate, 'S' sync) for path; for W/T the bytes of
 * [at, at + len) as they are now, and the file size now. Caller holds the lock. */
static void record(char kind, int fd, const char *path, uint64_t at, uint64_t len) {
    uint32_t plen = (uint32_t)strlen(path);
    put(&kind, 1);
    put(&plen, 4);
    put(path, plen);
    if (kind == 'S') return;
    struct stat st;
    uint64_t size = fstat(fd, &st) == 0 ? (uint64_t)st.st_size : 0;
    uint64_t saved = at < size ? (size - at < len ? size - at : len) : 0;
    put(&at, 8);
    put(&size, 8);
    put(&saved, 8);
    /* A write-only descriptor cannot be read back: read the old bytes through a
     * read-only one of the same file (else they would be saved as zeros). */
    int rfd = fd;
    if (saved > 0 && (fcntl(fd, F_GETFL) & O_ACCMODE) == O_WRONLY) {
        rfd = open(path, O_RDONLY | O_CLOEXEC);
        if (rfd < 0) rfd = fd;
    }
    char buf[65536];
    uint64_t done = 0;
    while (done < saved) {
        size_t want = saved - done < sizeof buf ? (size_t)(saved - done) : sizeof buf;
        ssize_t r = pread(rfd, buf, want, (off_t)(at + done));
        if (r <= 0) { memset(buf, 0, want); r = (ssize_t)want; }
        put(buf, (size_t)r);
        done += (uint64_t)r;
    }
    if (rfd != fd) close(rfd);
}

static uint64_t iov_len(const struct iovec *iov, int cnt) {
    uint64_t n = 0;
    for (int i = 0; i < cnt; i++) n += iov[i].iov_len;
    return n;
}

ssize_t pwrite64(int fd, const void *buf, size_t n, off64_t off) {
    init();
    char path[4096];
    if (!tracked(fd, path, sizeof path)) return real_pwrite64(fd, buf, n, off);
    pthread_mutex_lock(&lock);
    record('W', fd, path, (uint64_t)off, n);
    ssize_t r = real_pwrite64(fd, buf, n, off);
    pthread_mutex_unlock(&lock);
    return r;
}

ssize_t pwrite(int fd, const void *buf, size_t n, off_t off) {
    return pwrite64(fd, buf, n, off);
}

ssize_t write(int fd, const void *buf, size_t n) {
    init();
    char path[4096];
    if (!tracked(fd, path, sizeof path)) return real_write(fd, buf, n);
    pthread_mutex_lock(&lock);
    off_t at = (fcntl(fd, F_GETFL) & O_APPEND) ? lseek(fd, 0, SEEK_END) : lseek(fd, 0, SEEK_CUR);
    record('W', fd, path, (uint64_t)at, n);
    ssize_t r = real_write(fd, buf, n);
    pthread_mutex_unlock(&lock);
    return r;
}

ssize_t writev(int fd, const struct iovec *iov, int cnt) {
    init();
    char path[4096];
    if (!tracked(fd, path, sizeof path)) return real_writev(fd, iov, cnt);
    pthread_mutex_lock(&lock);
    off_t at = (fcntl(fd, F_GETFL) & O_APPEND) ? lseek(fd, 0, SEEK_END) : lseek(fd, 0, SEEK_CUR);
    record('W', fd, path, (uint64_t)at, iov_len(iov, cnt));
    ssize_t r = real_writev(fd, iov, cnt);
    pthread_mutex_unlock(&lock);
    return r;
}

ssize_t pwritev64(int fd, const struct iovec *iov, int cnt, off64_t off) {
    init();
    char path[4096];
    if (!tracked(fd, path, sizeof path)) return real_pwritev64(fd, iov, cnt, off);
    pthread_mutex_lock(&lock);
    record('W', fd, path, (uint64_t)off, iov_len(iov, cnt));
    ssize_t r = real_pwritev64(fd, iov, cnt, off);
    pthread_mutex_unlock(&lock);
    return r;
}

ssize_t pwritev(int fd, const struct iovec *iov, int cnt, off_t off) {
    return pwritev64(fd, iov, cnt, off);
}

int ftruncate64(int fd, off64_t len) {
    init();
    char path[4096];
    if (!tracked(fd, path, sizeof path)) return real_ftruncate64(fd, len);
    pthread_mutex_lock(&lock);
    /* Save what a shrink would cut off (from len to the current end). */
    record('T', fd, path, (uint64_t)len, UINT64_MAX / 2);
    int r = real_ftruncate64(fd, len);
    pthread_mutex_unlock(&lock);
    return r;
}

int ftruncate(int fd, off_t len) {
    return ftruncate64(fd, len);
}

/* `real` is a pointer to the resolved function, read after init(): fsync may be the
 * first call a process makes through this shim (an open that only checks and syncs a
 * directory), before any write has run init(). */
static int synced(int fd, int (**realp)(int)) {
    init();
    int (*real)(int) = *realp;
    char path[4096];
    if (!tracked(fd, path, sizeof path)) return real(fd);
    /* Only a sync that succeeded makes the earlier writes durable; the record goes
     * after it, under the lock so no write can slip between the sync and the record. */
    pthread_mutex_lock(&lock);
    int r = real(fd);
    if (r == 0) record('S', fd, path, 0, 0);
    pthread_mutex_unlock(&lock);
    return r;
}

int fsync(int fd) { return synced(fd, &real_fsync); }
int fdatasync(int fd) { return synced(fd, &real_fdatasync); }
