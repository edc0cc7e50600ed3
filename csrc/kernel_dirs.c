/* Kernel directories: reading their files for a bundle, and writing
 * restored ones, each into its own temporary directory under the cache,
 * renamed into place when complete.
 *
 * prt_read_files reads files whose sizes a listing just gave straight into
 * their places in one buffer; a file whose size changed meanwhile is
 * PRT_E_CHANGED, and the Python side reads that kernel again.
 *
 * prt_write_kernels is the file-system half of pyruntime.cache.restore (the
 * Python side decides what to write and verifies the bundle first). A kernel is
 * mkdir tmp -> create + write each file -> (fsync files and dir) -> rename
 * onto its final name. The rename is what makes a kernel visible, so a
 * reader never sees a partial one; when the final name already holds a
 * non-empty directory (another process restored it first) the rename fails
 * and the temporary copy is removed. Kernels are independent, so they are
 * spread over threads (parallel.c). */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "prt_core.h"

typedef struct {
    int root_fd;
    const char *root;
    prt_kernel_job *jobs;
    int do_fsync;
} write_ctx;

static int io_fail(prt_err *err, int e, const char *root, const char *dir,
                   const char *name, const char *what)
{
    char buf[128];
    const char *text = strerror_r(e, buf, sizeof(buf));
    return prt_fail(err, -e, "%s %s/%s%s%s: %s", what, root, dir,
                    name ? "/" : "", name ? name : "", text);
}

static int write_all(int fd, const uint8_t *data, size_t len)
{
    while (len > 0) {
        ssize_t n = write(fd, data, len);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        data += n;
        len -= (size_t)n;
    }
    return 0;
}

/* Create one file in the temporary directory; *created says whether it
 * exists now (so a failure can remove it). */
static int write_one(const write_ctx *c, int dir_fd, const prt_kernel_job *job,
                     uint32_t i, int *created, prt_err *err)
{
    const char *name = job->names[i];
    int fd = openat(dir_fd, name, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
    if (fd < 0)
        return io_fail(err, errno, c->root, job->tmp_name, name, "create");
    *created = 1;
    int rc = write_all(fd, job->datas[i], job->sizes[i]);
    if (rc != 0) {
        close(fd);
        return io_fail(err, -rc, c->root, job->tmp_name, name, "write");
    }
    if (c->do_fsync && fsync(fd) != 0) {
        int e = errno;
        close(fd);
        return io_fail(err, e, c->root, job->tmp_name, name, "fsync");
    }
    if (close(fd) != 0)
        return io_fail(err, errno, c->root, job->tmp_name, name, "close");
    return 0;
}

/* Best effort: the files this call created, then the directory. What
 * cannot be removed is tmp.* litter the next restore or `cache clean`
 * removes. */
static void remove_tmp(const write_ctx *c, int dir_fd, const prt_kernel_job *job, uint32_t created)
{
    for (uint32_t i = 0; i < created; i++)
        (void)unlinkat(dir_fd, job->names[i], 0);
    (void)unlinkat(c->root_fd, job->tmp_name, AT_REMOVEDIR);
}

static int lost_race(int e)
{
    return e == ENOTEMPTY || e == EEXIST || e == ENOTDIR || e == EISDIR;
}

static int write_kernel(void *arg, size_t k, prt_err *err)
{
    const write_ctx *c = arg;
    prt_kernel_job *job = &c->jobs[k];
    if (mkdirat(c->root_fd, job->tmp_name, 0777) != 0)
        return io_fail(err, errno, c->root, job->tmp_name, NULL, "mkdir");
    int dir_fd = openat(c->root_fd, job->tmp_name, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dir_fd < 0) {
        int rc = io_fail(err, errno, c->root, job->tmp_name, NULL, "open");
        (void)unlinkat(c->root_fd, job->tmp_name, AT_REMOVEDIR);
        return rc;
    }
    int rc = 0;
    uint32_t created = 0;
    for (uint32_t i = 0; i < job->nfiles && rc == 0; i++) {
        int made = 0;
        rc = write_one(c, dir_fd, job, i, &made, err);
        created += (uint32_t)made;
    }
    if (rc == 0 && c->do_fsync && fsync(dir_fd) != 0)
        rc = io_fail(err, errno, c->root, job->tmp_name, NULL, "fsync");
    if (rc == 0) {
        if (renameat(c->root_fd, job->tmp_name, c->root_fd, job->final_name) == 0) {
            job->renamed = 1;
        } else if (lost_race(errno)) {
            job->renamed = 0;  /* another restorer put this kernel in place first */
        } else {
            rc = io_fail(err, errno, c->root, job->final_name, NULL, "rename onto");
        }
    }
    if (job->renamed != 1)
        remove_tmp(c, dir_fd, job, created);
    close(dir_fd);
    return rc;
}

int prt_write_kernels(const char *root, prt_kernel_job *jobs, size_t njobs,
                      unsigned nthreads, int do_fsync, prt_err *err)
{
    for (size_t k = 0; k < njobs; k++)
        jobs[k].renamed = -1;  /* not attempted (yet) */
    int root_fd = open(root, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (root_fd < 0) {
        char buf[128];
        int e = errno;
        return prt_fail(err, -e, "open %s: %s", root, strerror_r(e, buf, sizeof(buf)));
    }
    write_ctx c = {root_fd, root, jobs, do_fsync};
    int rc = prt_parallel_for(njobs, nthreads, write_kernel, &c, err);
    close(root_fd);
    return rc;
}

/* ---- reading ---- */

/* Read exactly `size` bytes of `name` into dst; one byte more, or fewer,
 * means the file changed since it was listed. */
static int read_exact(int dir_fd, const char *dir, const char *name, uint8_t *dst,
                      uint64_t size, prt_err *err)
{
    int fd = openat(dir_fd, name, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0)
        return io_fail(err, errno, dir, name, NULL, "open");
    uint64_t got = 0;
    int rc = 0;
    uint8_t probe;
    for (;;) {
        ssize_t n;
        if (got < size)
            n = read(fd, dst + got, (size_t)(size - got));
        else
            n = read(fd, &probe, 1); /* must be end of file */
        if (n < 0) {
            if (errno == EINTR)
                continue;
            rc = io_fail(err, errno, dir, name, NULL, "read");
            break;
        }
        if (n == 0 && got == size)
            break;
        if (n == 0 || got == size) {
            rc = prt_fail(err, PRT_E_CHANGED, "%s/%s changed size while it was read", dir, name);
            break;
        }
        got += (uint64_t)n;
    }
    close(fd);
    return rc;
}

int prt_read_files(const char *dir, uint32_t n, const char *const *names,
                   const uint64_t *offsets, const uint64_t *sizes,
                   uint8_t *out, size_t out_len, prt_err *err)
{
    for (uint32_t i = 0; i < n; i++) {
        if (offsets[i] > out_len || sizes[i] > out_len - offsets[i])
            return prt_fail(err, -EINVAL, "file %u outside the buffer", i);
    }
    int dir_fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dir_fd < 0) {
        char buf[128];
        int e = errno;
        return prt_fail(err, -e, "open %s: %s", dir, strerror_r(e, buf, sizeof(buf)));
    }
    int rc = 0;
    for (uint32_t i = 0; i < n && rc == 0; i++) {
        if (names[i] != NULL) /* NULL: the caller filled this slot itself */
            rc = read_exact(dir_fd, dir, names[i], out + offsets[i], sizes[i], err);
    }
    close(dir_fd);
    return rc;
}
