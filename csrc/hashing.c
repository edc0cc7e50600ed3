/* XXH3 digests of bytes, files and Triton cache directories.
 *
 * hash_dir feeds one XXH3-128 state (seed 0) with:
 *   "PRTH" 0x01, then for every entry in canonical order
 *   u8 type ('f' file, 'd' directory, 'l' symlink), u32 path length,
 *   relative path ('/'-separated), u64 size, then the file contents or the
 *   symlink target (a directory has size 0 and no body).
 * Canonical order: depth first, children sorted by their raw name bytes
 * (strcmp, never the locale), a directory before its children. Skipped:
 * regular files named "lock", any name starting with "tmp." (Triton's
 * in-progress directories) and names containing ".tmp.pid_" (older
 * Triton's temporary files). docs/FORMAT.md holds the same text.
 *
 * XXH3 itself runs through the prt_xxh_impl table core.c picks (prt_xxh.h):
 * AVX2 when the CPU has it, else the linked libxxhash; the digests are the
 * same. */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <xxhash.h>

#include "prt_core.h"
#include "prt_xxh.h"

#define PRT_IO_CHUNK (1u << 20)

/* ---- streaming digests of files and trees ---- */
typedef struct {
    const prt_xxh_impl *xxh; /* the one table that owns `state` */
    void *state;
    uint8_t *buf;          /* PRT_IO_CHUNK bytes, reused for every file */
    char path[PATH_MAX];   /* relative path of the entry being visited */
    prt_err *err;
} walker;

/* Stream an open file into the state; expect exactly `size` bytes. */
static int feed_fd(walker *w, int fd, uint64_t size, const char *what)
{
    uint64_t total = 0;
    for (;;) {
        ssize_t n = read(fd, w->buf, PRT_IO_CHUNK);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return prt_fail(w->err, -errno, "cannot read %s: %s", what, strerror(errno));
        }
        if (n == 0)
            break;
        total += (uint64_t)n;
        if (w->xxh->update(w->state, w->buf, (size_t)n) != 0)
            return prt_fail(w->err, -ENOMEM, "xxhash update failed");
    }
    if (size != UINT64_MAX && total != size)
        return prt_fail(w->err, PRT_E_FORMAT, "%s changed size while being hashed", what);
    return 0;
}

/* Pick the XXH3 table once per digest and allocate its state and the read
 * buffer; 0, or -ENOMEM reported in w->err. */
static int walker_open(walker *w, prt_err *err)
{
    w->err = err;
    w->xxh = prt_xxh();
    w->state = w->xxh->state_new();
    w->buf = malloc(PRT_IO_CHUNK);
    if (w->state == NULL || w->buf == NULL)
        return prt_fail(err, -ENOMEM, "out of memory");
    return 0;
}

static void walker_digest(walker *w, char *out_hex)
{
    uint8_t digest[16];
    w->xxh->digest(w->state, digest);
    prt_hex128(digest, out_hex);
}

static void walker_close(walker *w)
{
    free(w->buf);
    if (w->state != NULL)
        w->xxh->state_free(w->state);
}

int prt_hash_file(const char *path, char *out_hex, prt_err *err)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return prt_fail(err, -errno, "cannot open %s: %s", path, strerror(errno));
    walker w = {0};
    int rc = walker_open(&w, err);
    if (rc == 0)
        rc = feed_fd(&w, fd, UINT64_MAX, path);
    if (rc == 0)
        walker_digest(&w, out_hex);
    walker_close(&w);
    close(fd);
    return rc;
}

/* Exclusions decided by the name alone; checked before the stat because
 * Triton creates and removes these while others walk the cache. */
static int is_excluded_name(const char *name)
{
    if (strncmp(name, "tmp.", 4) == 0)
        return 1;
    return strstr(name, ".tmp.pid_") != NULL;
}

static int cmp_names(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

typedef struct {
    char **names;
    size_t n, cap;
} name_list;

static void free_names(name_list *l)
{
    for (size_t i = 0; i < l->n; i++)
        free(l->names[i]);
    free(l->names);
}

/* All names of a directory except . and .., sorted by bytes. */
static int list_dir(walker *w, int dirfd, name_list *l)
{
    int fd = dup(dirfd);
    if (fd < 0)
        return prt_fail(w->err, -errno, "dup failed: %s", strerror(errno));
    DIR *d = fdopendir(fd);
    if (d == NULL) {
        int e = errno;
        close(fd);
        return prt_fail(w->err, -e, "cannot list %s: %s", w->path, strerror(e));
    }
    int rc = 0;
    for (;;) {
        errno = 0;
        struct dirent *de = readdir(d);
        if (de == NULL) {
            if (errno != 0)
                rc = prt_fail(w->err, -errno, "cannot list %s: %s", w->path, strerror(errno));
            break;
        }
        if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
            continue;
        if (l->n == l->cap) {
            size_t cap = l->cap ? l->cap * 2 : 64;
            char **grown = realloc(l->names, cap * sizeof(char *));
            if (grown == NULL) {
                rc = prt_fail(w->err, -ENOMEM, "out of memory");
                break;
            }
            l->names = grown;
            l->cap = cap;
        }
        if ((l->names[l->n] = strdup(de->d_name)) == NULL) {
            rc = prt_fail(w->err, -ENOMEM, "out of memory");
            break;
        }
        l->n++;
    }
    closedir(d);
    if (rc == 0 && l->n > 1)
        qsort(l->names, l->n, sizeof(char *), cmp_names);
    return rc;
}

static int feed_record(walker *w, char type, size_t path_len, uint64_t size)
{
    uint8_t head[1 + 4];
    uint8_t sz[8];
    head[0] = (uint8_t)type;
    prt_put32(head + 1, (uint32_t)path_len);
    prt_put64(sz, size);
    if (w->xxh->update(w->state, head, sizeof(head)) != 0 ||
        w->xxh->update(w->state, w->path, path_len) != 0 ||
        w->xxh->update(w->state, sz, sizeof(sz)) != 0)
        return prt_fail(w->err, -ENOMEM, "xxhash update failed");
    return 0;
}

static int walk(walker *w, int dirfd, size_t base_len);

static int visit(walker *w, int dirfd, const char *name, size_t base_len)
{
    size_t name_len = strlen(name);
    size_t path_len = base_len + (base_len ? 1 : 0) + name_len;
    if (path_len >= sizeof(w->path))
        return prt_fail(w->err, -ENAMETOOLONG, "path too long under %s", w->path);
    if (base_len)
        w->path[base_len] = '/';
    memcpy(w->path + path_len - name_len, name, name_len + 1);

    if (is_excluded_name(name))
        return 0;
    int is_lock = strcmp(name, "lock") == 0;
    struct stat st;
    if (fstatat(dirfd, name, &st, AT_SYMLINK_NOFOLLOW) != 0) {
        /* A lock file released since the listing would have been skipped. */
        if (errno == ENOENT && is_lock)
            return 0;
        return prt_fail(w->err, -errno, "cannot stat %s: %s", w->path, strerror(errno));
    }
    if (is_lock && S_ISREG(st.st_mode))
        return 0;

    int rc;
    if (S_ISLNK(st.st_mode)) {
        char target[PATH_MAX];
        ssize_t n = readlinkat(dirfd, name, target, sizeof(target));
        if (n < 0)
            return prt_fail(w->err, -errno, "cannot read link %s: %s", w->path, strerror(errno));
        if ((size_t)n >= sizeof(target))
            return prt_fail(w->err, -ENAMETOOLONG, "link target too long: %s", w->path);
        rc = feed_record(w, 'l', path_len, (uint64_t)n);
        if (rc == 0 && w->xxh->update(w->state, target, (size_t)n) != 0)
            rc = prt_fail(w->err, -ENOMEM, "xxhash update failed");
        return rc;
    }
    if (S_ISREG(st.st_mode)) {
        int fd = openat(dirfd, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
        if (fd < 0)
            return prt_fail(w->err, -errno, "cannot open %s: %s", w->path, strerror(errno));
        rc = feed_record(w, 'f', path_len, (uint64_t)st.st_size);
        if (rc == 0)
            rc = feed_fd(w, fd, (uint64_t)st.st_size, w->path);
        close(fd);
        return rc;
    }
    if (S_ISDIR(st.st_mode)) {
        rc = feed_record(w, 'd', path_len, 0);
        if (rc != 0)
            return rc;
        int fd = openat(dirfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (fd < 0)
            return prt_fail(w->err, -errno, "cannot open directory %s: %s", w->path, strerror(errno));
        rc = walk(w, fd, path_len);
        close(fd);
        return rc;
    }
    return prt_fail(w->err, PRT_E_FILETYPE,
                    "%s is not a regular file, directory or symlink", w->path);
}

static int walk(walker *w, int dirfd, size_t base_len)
{
    name_list l = {0};
    int rc = list_dir(w, dirfd, &l);
    for (size_t i = 0; rc == 0 && i < l.n; i++) {
        rc = visit(w, dirfd, l.names[i], base_len);
        w->path[base_len] = '\0';
    }
    free_names(&l);
    return rc;
}

int prt_hash_dir(const char *path, char *out_hex, prt_err *err)
{
    static const uint8_t domain[5] = {'P', 'R', 'T', 'H', 1};
    int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return prt_fail(err, -errno, "cannot open directory %s: %s", path, strerror(errno));
    walker w = {0};
    int rc = walker_open(&w, err);
    if (rc == 0 && w.xxh->update(w.state, domain, sizeof(domain)) != 0)
        rc = prt_fail(err, -ENOMEM, "xxhash update failed");
    if (rc == 0)
        rc = walk(&w, fd, 0);
    if (rc == 0)
        walker_digest(&w, out_hex);
    walker_close(&w);
    close(fd);
    return rc;
}
