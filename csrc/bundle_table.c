/* A bundle's kernel table, checked in one call.
 *
 * pyruntime.bundle_format parses kernels.json in Python and hands the
 * columns here: kernel hashes, file counts per kernel, file names and where
 * each file lies in the blobs. prt_table_is_plain says whether the table is
 * plain, i.e. passes every per-item check of the Python reader in its
 * common case (ASCII names): it is a fast path, never the only check. On
 * PRT_E_FORMAT the reader checks item by item, which names the problem the
 * same way on both backends, and accepts what only it accepts (non-ASCII
 * names). So this must never be laxer than bundle_format's checks.
 *
 *   hash:  1 to 128 of [A-Za-z0-9_.-], not starting with '.', not litter,
 *          no two alike
 *   name:  1 to 255 printable ASCII bytes but '/' and '\', not ".", ".."
 *          or "lock", not litter, no two alike within a kernel
 *   litter (pyruntime.bundle.rules.is_litter, all `cache clean` removes):
 *          starting with "tmp." or holding ".tmp.pid_"
 *   files: every range inside its blob, the ranges of each blob tiling it
 *          exactly (no gap, no overlap) */
#define _GNU_SOURCE
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "prt_core.h"

#define MAX_HASH 128u
#define MAX_NAME 255u

typedef struct {
    const char *p;
    size_t n;
} span;

typedef struct {
    uint64_t blob, off, size;
} range;

static int hash_char(unsigned char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
           c == '_' || c == '-' || c == '.';
}

/* In-flight or leftover writer state: the cleaner's names, never a kernel's. */
static int is_litter(const char *p, size_t n)
{
    static const char infix[] = ".tmp.pid_";
    return (n >= 4 && memcmp(p, "tmp.", 4) == 0) || memmem(p, n, infix, sizeof(infix) - 1) != NULL;
}

static int plain_hash(const char *p, size_t n)
{
    if (n == 0 || n > MAX_HASH || p[0] == '.' || is_litter(p, n))
        return 0;
    for (size_t i = 0; i < n; i++) {
        if (!hash_char((unsigned char)p[i]))
            return 0;
    }
    return 1;
}

static int plain_name(const char *p, size_t n)
{
    if (n == 0 || n > MAX_NAME)
        return 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)p[i];
        if (c < 0x20 || c > 0x7e || c == '/' || c == '\\')
            return 0;
    }
    return !((n == 1 && p[0] == '.') || (n == 2 && memcmp(p, "..", 2) == 0) ||
             (n == 4 && memcmp(p, "lock", 4) == 0) || is_litter(p, n));
}

/* Split buf[0..len) into exactly n NUL-terminated strings that each pass
 * ok(). */
static int split_plain(const char *buf, size_t len, size_t n, span *out,
                       int (*ok)(const char *, size_t))
{
    size_t pos = 0;
    for (size_t i = 0; i < n; i++) {
        const char *nul = pos < len ? memchr(buf + pos, '\0', len - pos) : NULL;
        if (nul == NULL)
            return 0;
        out[i].p = buf + pos;
        out[i].n = (size_t)(nul - (buf + pos));
        if (!ok(out[i].p, out[i].n))
            return 0;
        pos = (size_t)(nul - buf) + 1;
    }
    return pos == len;
}

static int cmp_span(const void *a, const void *b)
{
    const span *x = a, *y = b;
    size_t n = x->n < y->n ? x->n : y->n;
    int c = memcmp(x->p, y->p, n);
    return c != 0 ? c : (x->n > y->n) - (x->n < y->n);
}

/* Whether spans s[0..n) are all different (sorts them). */
static int all_different(span *s, size_t n)
{
    if (n < 2)
        return 1;
    qsort(s, n, sizeof(*s), cmp_span);
    for (size_t i = 1; i < n; i++) {
        if (cmp_span(&s[i - 1], &s[i]) == 0)
            return 0;
    }
    return 1;
}

static int cmp_range(const void *a, const void *b)
{
    const range *x = a, *y = b;
    if (x->blob != y->blob)
        return x->blob < y->blob ? -1 : 1;
    if (x->off != y->off)
        return x->off < y->off ? -1 : 1;
    return (x->size > y->size) - (x->size < y->size);  /* empty files first, as the Python check */
}

/* Whether the ranges tile blobs 0..nblobs-1 exactly (sorts them). */
static int tiles(range *r, size_t n, const uint64_t *blob_lens, size_t nblobs)
{
    qsort(r, n, sizeof(*r), cmp_range);
    size_t i = 0;
    for (size_t b = 0; b < nblobs; b++) {
        uint64_t pos = 0;
        for (; i < n && r[i].blob == b; i++) {
            if (r[i].off != pos || r[i].size > blob_lens[b] - pos)
                return 0;
            pos += r[i].size;
        }
        if (pos != blob_lens[b])
            return 0;
    }
    return i == n;  /* else a file points at a blob that does not exist */
}

static int not_plain(prt_err *err, const char *what)
{
    return prt_fail(err, PRT_E_FORMAT, "kernel table is not plain: %s", what);
}

static int check_all(const char *hashes, size_t hashes_len, size_t nkernels,
                     const uint32_t *kernel_files, const char *names, size_t names_len,
                     size_t nfiles, const uint64_t *blob_of, const uint64_t *offs,
                     const uint64_t *sizes, const uint64_t *blob_lens, size_t nblobs,
                     span *hs, span *ns, range *rs, prt_err *err)
{
    if (!split_plain(hashes, hashes_len, nkernels, hs, plain_hash))
        return not_plain(err, "a kernel hash");
    if (!all_different(hs, nkernels))
        return not_plain(err, "a kernel hash appears twice");
    if (!split_plain(names, names_len, nfiles, ns, plain_name))
        return not_plain(err, "a file name");
    size_t first = 0;
    for (size_t k = 0; k < nkernels; k++) {
        if (kernel_files[k] > nfiles - first)
            return not_plain(err, "file counts");
        if (!all_different(ns + first, kernel_files[k]))
            return not_plain(err, "a file name appears twice in a kernel");
        first += kernel_files[k];
    }
    if (first != nfiles)
        return not_plain(err, "file counts");
    for (size_t i = 0; i < nfiles; i++)
        rs[i] = (range){blob_of[i], offs[i], sizes[i]};
    if (!tiles(rs, nfiles, blob_lens, nblobs))
        return not_plain(err, "the files do not tile the blobs");
    return 0;
}

int prt_table_is_plain(const char *hashes, size_t hashes_len, size_t nkernels,
                       const uint32_t *kernel_files, const char *names, size_t names_len,
                       size_t nfiles, const uint64_t *numbers, const uint64_t *blob_lens,
                       size_t nblobs, prt_err *err)
{
    const uint64_t *blob_of = numbers, *offs = numbers + nfiles, *sizes = numbers + 2 * nfiles;
    if (nkernels > SIZE_MAX / sizeof(span) || nfiles > SIZE_MAX / sizeof(range) / 3)
        return prt_fail(err, -ENOMEM, "a table of %zu kernels and %zu files", nkernels, nfiles);
    span *hs = malloc((nkernels ? nkernels : 1) * sizeof(*hs));
    span *ns = malloc((nfiles ? nfiles : 1) * sizeof(*ns));
    range *rs = malloc((nfiles ? nfiles : 1) * sizeof(*rs));
    int rc;
    if (hs == NULL || ns == NULL || rs == NULL)
        rc = prt_fail(err, -ENOMEM, "no memory to check a table of %zu files", nfiles);
    else
        rc = check_all(hashes, hashes_len, nkernels, kernel_files, names, names_len, nfiles,
                       blob_of, offs, sizes, blob_lens, nblobs, hs, ns, rs, err);
    free(hs);
    free(ns);
    free(rs);
    return rc;
}
