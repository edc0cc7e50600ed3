/* Kernel directories: reading their files for a bundle, and writing
 * restored ones, each into its own temporary directory under the cache,
 * renamed into place when complete.
 *
 * prt_read_files reads files whose sizes a listing just gave straight into
 * their places in one buffer; a file whose size changed meanwhile is
 * PRT_E_CHANGED, and the Python side reads that kernel again.
 *
 * prt_write_kernels is the file-system half of pyruntime.cache.restore (the
 * Python side decides what to write and verifies the bundle first). Its
 * input is one flat file table (names, and where each file's bytes lie in
 * a few blobs: for a loaded bundle, its unpacked blobs), so no per-file
 * object is built; the [REPLACE] sentinel in .json files is swapped for the
 * kernel's directory here, as the file is written. A kernel is
 * mkdir tmp + flock it -> create + write each file -> (fsync files and dir)
 * -> rename onto its final name -> unlock. The rename is what makes a kernel
 * visible, so a reader never sees a partial one; when the final name already
 * holds a non-empty directory (another process restored it first) the
 * rename fails and the temporary copy is removed. A final name held by a
 * non-directory (a file, FIFO, symlink...) is unlinked first when the caller
 * asks (replace), else reported. The flock is what tells cleaners
 * (pyruntime.bundle.restore.clean) that a tmp directory is in use: a pid in
 * its name says nothing in another PID namespace. Kernels are independent,
 * so they are spread over threads (parallel.c). */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <limits.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "prt_core.h"

typedef struct {
    int root_fd;
    const char *root;
    const prt_file_table *t;
    const char *const *file_names;  /* table names, split */
    const char *const *job_names;   /* per job: tmp name, final name */
    prt_kernel_job *jobs;
    int do_fsync;
    int replace;                    /* unlink a non-directory holding a final name */
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

static int ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && memcmp(s + n - m, suffix, m) == 0;
}

/* Write data to fd with every sentinel swapped for prefix + final_name,
 * left to right, as Python's bytes.replace does. Only .json files carry
 * the sentinel, and they are small, so the swapped copy is built whole. */
static int write_swapped(const prt_file_table *t, const char *final_name, int fd,
                         const uint8_t *data, size_t len, size_t *written)
{
    size_t count = 0;
    for (const uint8_t *p = data, *end = data + len;
         (p = memmem(p, (size_t)(end - p), t->sentinel, t->sentinel_len)) != NULL;
         p += t->sentinel_len)
        count++;
    *written = len;
    if (count == 0)
        return write_all(fd, data, len);
    size_t final_len = strlen(final_name);
    size_t repl_len = t->prefix_len + final_len;
    /* len >= count * sentinel_len, so only the growth can overflow */
    if (repl_len > t->sentinel_len && (repl_len - t->sentinel_len) > (SIZE_MAX - len) / count)
        return -EOVERFLOW;
    size_t out_len = len - count * t->sentinel_len + count * repl_len;
    uint8_t *out = malloc(out_len ? out_len : 1);
    if (out == NULL)
        return -ENOMEM;
    *written = out_len;
    uint8_t *o = out;
    const uint8_t *p = data, *end = data + len, *hit;
    while ((hit = memmem(p, (size_t)(end - p), t->sentinel, t->sentinel_len)) != NULL) {
        memcpy(o, p, (size_t)(hit - p));
        o += hit - p;
        memcpy(o, t->prefix, t->prefix_len);
        o += t->prefix_len;
        memcpy(o, final_name, final_len);
        o += final_len;
        p = hit + t->sentinel_len;
    }
    memcpy(o, p, (size_t)(end - p));
    int rc = write_all(fd, out, out_len);
    free(out);
    return rc;
}

/* Create file i of the table in the temporary directory; *created says
 * whether it exists now (so a failure can remove it). */
static int write_one(const write_ctx *c, int dir_fd, prt_kernel_job *job, const char *tmp_name,
                     const char *final_name, uint64_t i, int *created, prt_err *err)
{
    const prt_file_table *t = c->t;
    const char *name = c->file_names[i];
    const uint8_t *data = t->blobs[t->blob_of[i]] + t->offs[i];
    size_t len = (size_t)t->sizes[i];
    int fd = openat(dir_fd, name, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
    if (fd < 0)
        return io_fail(err, errno, c->root, tmp_name, name, "create");
    *created = 1;
    int rc;
    size_t written = len;
    if (t->sentinel_len > 0 && ends_with(name, ".json"))
        rc = write_swapped(t, final_name, fd, data, len, &written);
    else
        rc = write_all(fd, data, len);
    if (rc != 0) {
        close(fd);
        return io_fail(err, -rc, c->root, tmp_name, name, "write");
    }
    if (c->do_fsync && fsync(fd) != 0) {
        int e = errno;
        close(fd);
        return io_fail(err, e, c->root, tmp_name, name, "fsync");
    }
    if (close(fd) != 0)
        return io_fail(err, errno, c->root, tmp_name, name, "close");
    job->bytes += written;
    return 0;
}

/* Best effort: the files this call created, then the directory (still
 * locked: no cleaner works on it meanwhile). What cannot be removed is
 * tmp.* litter the next restore or `cache clean` removes. */
static void remove_tmp(const write_ctx *c, int dir_fd, const prt_kernel_job *job,
                       const char *tmp_name, uint64_t created)
{
    for (uint64_t i = 0; i < created; i++)
        (void)unlinkat(dir_fd, c->file_names[job->first + i], 0);
    (void)unlinkat(c->root_fd, tmp_name, AT_REMOVEDIR);
}

/* Times a tmp directory is made again under another name because a
 * cleaner took it between its mkdir and its flock, and times a kernel's
 * name is freed of a non-directory before its rename is given up. */
#define MAX_TMP_ATTEMPTS 8
#define MAX_PLACE_ATTEMPTS 4

/* Take the flock that marks fd's directory as in use: 0 taken (or the file
 * system has no locks: cleaners then go by age), 1 a cleaner holds it,
 * else -errno. */
static int lock_dir(int fd)
{
    for (;;) {
        if (flock(fd, LOCK_EX | LOCK_NB) == 0)
            return 0;
        if (errno == EINTR)
            continue;
        if (errno == EWOULDBLOCK)
            return 1;
        if (errno == ENOLCK || errno == EOPNOTSUPP || errno == ENOSYS)
            return 0;
        return -errno;
    }
}

/* *same: whether `name` under root_fd is still the directory open as fd (a
 * cleaner that took it before our flock has removed it). */
static int still_named(int root_fd, const char *name, int fd, int *same)
{
    struct stat mine, named;
    if (fstat(fd, &mine) != 0)
        return -errno;
    if (fstatat(root_fd, name, &named, AT_SYMLINK_NOFOLLOW) != 0) {
        if (errno != ENOENT)
            return -errno;
        *same = 0;
        return 0;
    }
    *same = mine.st_dev == named.st_dev && mine.st_ino == named.st_ino;
    return 0;
}

/* mkdir, open and lock `name` under root: 0 with *dir_fd (locked until it
 * is closed), 1 when a cleaner took the directory first (try another
 * name), else a negative error. */
static int open_locked_dir(const write_ctx *c, const char *name, int *dir_fd, prt_err *err)
{
    if (mkdirat(c->root_fd, name, 0777) != 0)
        return io_fail(err, errno, c->root, name, NULL, "mkdir");
    int fd = openat(c->root_fd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) {
        int e = errno;
        if (e == ENOENT)
            return 1;
        (void)unlinkat(c->root_fd, name, AT_REMOVEDIR);
        return io_fail(err, e, c->root, name, NULL, "open");
    }
    int same = 0;
    int rc = lock_dir(fd);
    if (rc == 0)
        rc = still_named(c->root_fd, name, fd, &same);
    if (rc < 0) {
        close(fd);
        (void)unlinkat(c->root_fd, name, AT_REMOVEDIR);
        return io_fail(err, -rc, c->root, name, NULL, "lock");
    }
    if (rc == 1 || !same) {
        close(fd);  /* the cleaner removes it */
        return 1;
    }
    *dir_fd = fd;
    return 0;
}

/* Make the job's tmp directory, locked: base_name, else base_name r1, r2, ...
 * while cleaners take them. */
static int make_tmp_dir(const write_ctx *c, const char *base_name, char *name, size_t cap,
                        int *dir_fd, prt_err *err)
{
    for (unsigned attempt = 0; attempt < MAX_TMP_ATTEMPTS; attempt++) {
        int n = attempt == 0 ? snprintf(name, cap, "%s", base_name)
                             : snprintf(name, cap, "%sr%u", base_name, attempt);
        if (n < 0 || (size_t)n >= cap)
            return prt_fail(err, -ENAMETOOLONG, "tmp name %.64s is too long", base_name);
        int rc = open_locked_dir(c, name, dir_fd, err);
        if (rc != 1)
            return rc;
    }
    return prt_fail(err, -EAGAIN, "mkdir %s/%s: taken by a cache cleaner %d times", c->root,
                    base_name, MAX_TMP_ATTEMPTS);
}

/* Rename the complete tmp directory onto final_name. A directory with files
 * there: another restorer was first (PRESENT). A non-directory there (ENOTDIR:
 * a file, FIFO, socket, device or symlink, never followed): with replace it
 * is unlinked and the rename tried again; unlinkat without AT_REMOVEDIR
 * never removes a directory, so a kernel another restorer renamed there
 * meanwhile stays and wins. */
static int place_kernel(const write_ctx *c, const char *tmp_name, const char *final_name,
                        prt_kernel_job *job, prt_err *err)
{
    int unlinked = 0;
    for (int attempt = 1;; attempt++) {
        if (renameat(c->root_fd, tmp_name, c->root_fd, final_name) == 0) {
            job->outcome = unlinked ? PRT_KERNEL_REPLACED : PRT_KERNEL_RENAMED;
            return 0;
        }
        int e = errno;
        if (e == ENOTEMPTY || e == EEXIST) {
            job->outcome = PRT_KERNEL_PRESENT;
            return 0;
        }
        if (e != ENOTDIR)
            return io_fail(err, e, c->root, final_name, NULL, "rename onto");
        job->outcome = PRT_KERNEL_BLOCKED;
        if (!c->replace)
            return 0;
        if (attempt == MAX_PLACE_ATTEMPTS) {
            job->err_no = EAGAIN;  /* something keeps putting a non-directory there */
            return 0;
        }
        if (unlinkat(c->root_fd, final_name, 0) == 0) {
            unlinked = 1;
        } else if (errno != ENOENT && errno != EISDIR) {
            job->err_no = errno;
            return 0;
        }
    }
}

static int write_kernel(void *arg, size_t k, prt_err *err)
{
    const write_ctx *c = arg;
    prt_kernel_job *job = &c->jobs[k];
    const char *final_name = c->job_names[2 * k + 1];
    char tmp_name[NAME_MAX + 1];
    int dir_fd = -1;
    int rc = make_tmp_dir(c, c->job_names[2 * k], tmp_name, sizeof(tmp_name), &dir_fd, err);
    if (rc != 0)
        return rc;
    uint64_t created = 0;
    for (uint64_t i = 0; i < job->nfiles && rc == 0; i++) {
        int made = 0;
        rc = write_one(c, dir_fd, job, tmp_name, final_name, job->first + i, &made, err);
        created += (uint64_t)made;
    }
    if (rc == 0 && c->do_fsync && fsync(dir_fd) != 0)
        rc = io_fail(err, errno, c->root, tmp_name, NULL, "fsync");
    if (rc == 0)
        rc = place_kernel(c, tmp_name, final_name, job, err);
    if (job->outcome != PRT_KERNEL_RENAMED && job->outcome != PRT_KERNEL_REPLACED) {
        remove_tmp(c, dir_fd, job, tmp_name, created);
        job->bytes = 0;  /* none of them landed */
    }
    close(dir_fd);  /* releases the lock, once the directory is renamed or removed */
    return rc;
}

/* Point out[0..n) at the n NUL-terminated strings packed back to back in
 * buf[0..len), which must hold exactly those. */
static int split_names(const char *buf, size_t len, size_t n, const char **out,
                       const char *what, prt_err *err)
{
    size_t pos = 0;
    for (size_t i = 0; i < n; i++) {
        const char *nul = pos < len ? memchr(buf + pos, '\0', len - pos) : NULL;
        if (nul == NULL)
            return prt_fail(err, -EINVAL, "%s: %zu of %zu names", what, i, n);
        out[i] = buf + pos;
        pos = (size_t)(nul - buf) + 1;
    }
    if (pos != len)
        return prt_fail(err, -EINVAL, "%s: more than %zu names", what, n);
    return 0;
}

/* Every file range inside its blob, every job inside the table. */
static int check_table(const prt_file_table *t, const prt_kernel_job *jobs, size_t njobs,
                       prt_err *err)
{
    for (size_t i = 0; i < t->nfiles; i++) {
        uint32_t b = t->blob_of[i];
        if (b >= t->nblobs)
            return prt_fail(err, -EINVAL, "file %zu: blob %u of %zu", i, b, t->nblobs);
        if (t->offs[i] > t->blob_lens[b] || t->sizes[i] > t->blob_lens[b] - t->offs[i])
            return prt_fail(err, -EINVAL, "file %zu: outside blob %u", i, b);
    }
    for (size_t k = 0; k < njobs; k++) {
        if (jobs[k].first > t->nfiles || jobs[k].nfiles > t->nfiles - jobs[k].first)
            return prt_fail(err, -EINVAL, "kernel %zu: files outside the table", k);
    }
    if (t->sentinel_len > 0 && (t->sentinel == NULL || t->prefix == NULL))
        return prt_fail(err, -EINVAL, "a sentinel swap needs both strings");
    return 0;
}

int prt_write_kernels(prt_pool *pool, const char *root, const prt_file_table *table,
                      const char *job_names, size_t job_names_len,
                      prt_kernel_job *jobs, size_t njobs,
                      unsigned nthreads, int do_fsync, int replace, prt_err *err)
{
    for (size_t k = 0; k < njobs; k++) {
        jobs[k].outcome = PRT_KERNEL_NOT_TRIED;
        jobs[k].err_no = 0;
        jobs[k].bytes = 0;
    }
    int rc = check_table(table, jobs, njobs, err);
    if (rc != 0)
        return rc;
    /* one array: the file names, then two names per job */
    size_t nnames = table->nfiles + 2 * njobs;
    const char **names = malloc((nnames ? nnames : 1) * sizeof(*names));
    if (names == NULL)
        return prt_fail(err, -ENOMEM, "no memory for %zu names", nnames);
    rc = split_names(table->names, table->names_len, table->nfiles, names, "file names", err);
    if (rc == 0)
        rc = split_names(job_names, job_names_len, 2 * njobs, names + table->nfiles, "kernel names", err);
    if (rc != 0) {
        free(names);
        return rc;
    }
    int root_fd = open(root, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (root_fd < 0) {
        char buf[128];
        int e = errno;
        free(names);
        return prt_fail(err, -e, "open %s: %s", root, strerror_r(e, buf, sizeof(buf)));
    }
    write_ctx c = {root_fd, root, table, names, names + table->nfiles, jobs, do_fsync, replace != 0};
    rc = prt_parallel_for(pool, njobs, nthreads, write_kernel, &c, err);
    close(root_fd);
    free(names);
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
