/* Artifact packing: a self-describing container of named LZ4 blocks.
 *
 * Header, 32 bytes, little-endian:
 *   0 u32 magic "PRTP"  4 u16 version (1)  6 u16 flags (0)
 *   8 u32 entry count  12 u32 index length  16 u64 data length
 *  24 u64 XXH3-64 of the index bytes
 * Index, one record per entry:
 *   u16 name length, u8 method (0 stored, 1 LZ4 block), u8 reserved (0),
 *   u64 raw size, u64 stored size, u64 XXH3-64 of the raw bytes, name.
 * Data: the stored blocks in index order. An entry is LZ4-compressed
 * (LZ4_compress_default; prt_pack_entry can use LZ4's HC mode too: the
 * same block format) unless that does not make it smaller, in which case
 * it is stored as is; an empty entry is stored with size 0.
 * Unpacking validates the whole index before it touches the data, and every
 * block before the caller sees any of it. */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <lz4.h>
#include <lz4hc.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "prt_core.h"

#define INDEX_REC 28u
#define MAX_NAME 255u
#define LZ4_MAX_RATIO 255u /* an LZ4 block never expands data more than this */
/* Names in messages are cut to NAME_SHOWN bytes so that the problem named
 * after them always fits in prt_err.msg (a name may be 255 bytes). */
#define NAME_SHOWN 64u
#define SHOW_NAME(len, p) (int)((len) > NAME_SHOWN ? NAME_SHOWN : (len)), (const char *)(p), \
                          ((len) > NAME_SHOWN ? "..." : "")

static int check_name(const uint8_t *name, size_t len, size_t i, prt_err *err)
{
    if (len == 0)
        return prt_fail(err, PRT_E_NAME, "entry %zu: empty name", i);
    if (len > MAX_NAME)
        return prt_fail(err, PRT_E_NAME, "entry %zu: name longer than %u bytes", i, MAX_NAME);
    if ((len == 1 && name[0] == '.') || (len == 2 && name[0] == '.' && name[1] == '.'))
        return prt_fail(err, PRT_E_NAME, "entry %zu: name '%.*s' is not a file name", i, (int)len, name);
    for (size_t k = 0; k < len; k++) {
        if (name[k] == '/' || name[k] == '\\' || name[k] == '\0')
            return prt_fail(err, PRT_E_NAME,
                            "entry %zu: name contains a path separator or NUL", i);
    }
    return 0;
}

int prt_pack_bound(size_t n, const size_t *name_lens, const size_t *sizes,
                   size_t *out_bound, prt_err *err)
{
    uint64_t total = PRT_PACK_HEADER_SIZE;
    for (size_t i = 0; i < n; i++) {
        if (sizes[i] > (size_t)LZ4_MAX_INPUT_SIZE)
            return prt_fail(err, PRT_E_TOO_LARGE,
                            "entry %zu: %zu bytes is over the %d-byte LZ4 block limit",
                            i, sizes[i], LZ4_MAX_INPUT_SIZE);
        total += INDEX_REC + name_lens[i];
        total += (uint64_t)LZ4_compressBound((int)sizes[i]);
    }
    if (n > UINT32_MAX || total > (uint64_t)SIZE_MAX)
        return prt_fail(err, PRT_E_TOO_LARGE, "too many or too large entries");
    *out_bound = (size_t)total;
    return 0;
}

/* Compress one entry at dst at `level` (0: LZ4's fast mode, 1 to 12: its
 * HC mode, which spends more time packing for a smaller block that also
 * decompresses faster); returns the stored size and method. */
static size_t store_entry(const uint8_t *src, size_t len, int level, uint8_t *dst,
                          size_t cap, uint8_t *method)
{
    if (len > 0) {
        int icap = cap > (size_t)INT32_MAX ? INT32_MAX : (int)cap;
        int c = level == 0 ? LZ4_compress_default((const char *)src, (char *)dst, (int)len, icap)
                           : LZ4_compress_HC((const char *)src, (char *)dst, (int)len, icap, level);
        if (c > 0 && (size_t)c < len) {
            *method = 1;
            return (size_t)c;
        }
        memcpy(dst, src, len);
    }
    *method = 0;
    return len;
}

static uint8_t *put_record(uint8_t *rec, const char *name, size_t name_len, uint8_t method,
                           uint64_t raw, uint64_t stored, uint64_t checksum)
{
    prt_put16(rec, (uint16_t)name_len);
    rec[2] = method;
    rec[3] = 0;
    prt_put64(rec + 4, raw);
    prt_put64(rec + 12, stored);
    prt_put64(rec + 20, checksum);
    memcpy(rec + INDEX_REC, name, name_len);
    return rec + INDEX_REC + name_len;
}

/* The header last: it checksums the index written before it. */
static void put_header(uint8_t *out, size_t n, size_t index_len, size_t data_len)
{
    prt_put32(out, PRT_PACK_MAGIC);
    prt_put16(out + 4, PRT_PACK_VERSION);
    prt_put16(out + 6, 0);
    prt_put32(out + 8, (uint32_t)n);
    prt_put32(out + 12, (uint32_t)index_len);
    prt_put64(out + 16, data_len);
    prt_put64(out + 24, prt_xxh3_64(out + PRT_PACK_HEADER_SIZE, index_len));
}

typedef struct {
    const char *const *names;
    const size_t *lens;
} pack_names;

static int cmp_pack_names(const void *a, const void *b, void *arg)
{
    const pack_names *c = arg;
    size_t x = *(const size_t *)a, y = *(const size_t *)b;
    size_t n = c->lens[x] < c->lens[y] ? c->lens[x] : c->lens[y];
    int r = memcmp(c->names[x], c->names[y], n);
    if (r != 0)
        return r;
    return (c->lens[x] > c->lens[y]) - (c->lens[x] < c->lens[y]);
}

/* pack refuses what unpack would refuse: two entries with one name. */
static int check_pack_duplicates(size_t n, const char *const *names,
                                 const size_t *lens, prt_err *err)
{
    if (n < 2)
        return 0;
    size_t *order = malloc(n * sizeof(size_t));
    if (order == NULL)
        return prt_fail(err, -ENOMEM, "out of memory");
    for (size_t i = 0; i < n; i++)
        order[i] = i;
    pack_names ctx = {names, lens};
    qsort_r(order, n, sizeof(size_t), cmp_pack_names, &ctx);
    int rc = 0;
    for (size_t i = 1; i < n && rc == 0; i++) {
        if (cmp_pack_names(&order[i - 1], &order[i], &ctx) == 0)
            rc = prt_fail(err, PRT_E_DUPLICATE, "duplicate entry name '%.*s%s'",
                          SHOW_NAME(lens[order[i]], names[order[i]]));
    }
    free(order);
    return rc;
}

/* Every name plain, none twice, and the index they make within its u32
 * length: what unpack checks of an index, for the packers. */
static int check_index(size_t n, const char *const *names, const size_t *name_lens,
                       size_t *index_len, prt_err *err)
{
    size_t len = 0;
    for (size_t i = 0; i < n; i++) {
        int rc = check_name((const uint8_t *)names[i], name_lens[i], i, err);
        if (rc != 0)
            return rc;
        len += INDEX_REC + name_lens[i];
    }
    if (len > UINT32_MAX)
        return prt_fail(err, PRT_E_TOO_LARGE, "index over 4 GiB");
    *index_len = len;
    return check_pack_duplicates(n, names, name_lens, err);
}

int prt_pack(size_t n, const char *const *names, const size_t *name_lens,
             const uint8_t *const *datas, const size_t *sizes,
             uint8_t *out, size_t out_cap, size_t *out_len, prt_err *err)
{
    size_t bound = 0;
    int rc = prt_pack_bound(n, name_lens, sizes, &bound, err);
    if (rc != 0)
        return rc;
    if (out_cap < bound)
        return prt_fail(err, -ENOBUFS, "output buffer smaller than the bound");
    size_t index_len = 0;
    rc = check_index(n, names, name_lens, &index_len, err);
    if (rc != 0)
        return rc;

    uint8_t *rec = out + PRT_PACK_HEADER_SIZE;
    uint8_t *data = rec + index_len;
    size_t data_len = 0;
    for (size_t i = 0; i < n; i++) {
        uint8_t method = 0;
        size_t stored = store_entry(datas[i], sizes[i], 0, data + data_len,
                                    out_cap - (size_t)(data - out) - data_len, &method);
        rec = put_record(rec, names[i], name_lens[i], method, sizes[i], stored,
                         prt_xxh3_64(datas[i], sizes[i]));
        data_len += stored;
    }
    put_header(out, n, index_len, data_len);
    *out_len = PRT_PACK_HEADER_SIZE + index_len + data_len;
    return 0;
}

int prt_entry_bound(size_t len, size_t *out_bound, prt_err *err)
{
    if (len > (size_t)LZ4_MAX_INPUT_SIZE)
        return prt_fail(err, PRT_E_TOO_LARGE, "%zu bytes is over the %d-byte LZ4 block limit",
                        len, LZ4_MAX_INPUT_SIZE);
    *out_bound = (size_t)LZ4_compressBound((int)len);
    return 0;
}

int prt_pack_entry(const uint8_t *src, size_t len, int level, uint8_t *dst, size_t cap,
                   uint8_t *method, size_t *stored, uint64_t *checksum,
                   char *hex128, prt_err *err)
{
    if (level < 0 || level > LZ4HC_CLEVEL_MAX)
        return prt_fail(err, -EINVAL, "LZ4 level %d (0 to %d)", level, LZ4HC_CLEVEL_MAX);
    size_t bound = 0;
    int rc = prt_entry_bound(len, &bound, err);
    if (rc != 0)
        return rc;
    if (cap < bound)
        return prt_fail(err, -ENOBUFS, "output buffer smaller than the bound");
    *stored = store_entry(src, len, level, dst, cap, method);
    *checksum = prt_xxh3_64(src, len);
    if (hex128 != NULL)
        prt_hash_bytes(src, len, hex128);
    return 0;
}

/* What parse_record accepts of a method and its sizes: pack_stored must not
 * write what unpack refuses. */
static int check_stored(size_t i, uint8_t method, uint64_t raw, uint64_t stored, prt_err *err)
{
    if (method > 1)
        return prt_fail(err, PRT_E_FORMAT, "entry %zu: unknown method %u", i, method);
    if (method == 0 && stored != raw)
        return prt_fail(err, PRT_E_FORMAT, "entry %zu: stored size differs from raw size", i);
    if (method == 1 && (stored == 0 || stored >= raw || raw / LZ4_MAX_RATIO > stored))
        return prt_fail(err, PRT_E_FORMAT, "entry %zu: impossible LZ4 sizes (%llu -> %llu)", i,
                        (unsigned long long)stored, (unsigned long long)raw);
    if (raw > (uint64_t)LZ4_MAX_INPUT_SIZE)
        return prt_fail(err, PRT_E_TOO_LARGE, "entry %zu: %llu bytes is over the %d-byte LZ4 block limit",
                        i, (unsigned long long)raw, LZ4_MAX_INPUT_SIZE);
    return 0;
}

int prt_pack_stored_len(size_t n, const size_t *name_lens, const size_t *stored_sizes,
                        size_t *out_len, prt_err *err)
{
    uint64_t total = PRT_PACK_HEADER_SIZE;
    for (size_t i = 0; i < n; i++) {
        total += INDEX_REC + name_lens[i];
        total += stored_sizes[i];
    }
    if (n > UINT32_MAX || total > (uint64_t)SIZE_MAX)
        return prt_fail(err, PRT_E_TOO_LARGE, "too many or too large entries");
    *out_len = (size_t)total;
    return 0;
}

int prt_pack_stored(size_t n, const char *const *names, const size_t *name_lens,
                    const uint8_t *methods, const uint64_t *raw_sizes,
                    const uint64_t *checksums, const uint8_t *const *stored,
                    const size_t *stored_sizes, uint8_t *out, size_t out_cap,
                    size_t *out_len, prt_err *err)
{
    size_t need = 0;
    int rc = prt_pack_stored_len(n, name_lens, stored_sizes, &need, err);
    if (rc != 0)
        return rc;
    /* the blocks first, then the names: prt_pack's order (sizes, names) */
    for (size_t i = 0; i < n; i++) {
        rc = check_stored(i, methods[i], raw_sizes[i], stored_sizes[i], err);
        if (rc != 0)
            return rc;
    }
    size_t index_len = 0;
    rc = check_index(n, names, name_lens, &index_len, err);
    if (rc != 0)
        return rc;
    /* stored NULL: header and index only, the caller writes the blocks
     * after them itself (a file write from the blocks, no copy) */
    size_t want = stored == NULL ? PRT_PACK_HEADER_SIZE + index_len : need;
    if (out_cap < want)
        return prt_fail(err, -ENOBUFS, "output buffer smaller than the packed length");
    uint8_t *rec = out + PRT_PACK_HEADER_SIZE;
    uint8_t *data = rec + index_len;
    size_t data_len = 0;
    for (size_t i = 0; i < n; i++) {
        rec = put_record(rec, names[i], name_lens[i], methods[i], raw_sizes[i],
                         stored_sizes[i], checksums[i]);
        if (stored != NULL && stored_sizes[i] > 0)
            memcpy(data + data_len, stored[i], stored_sizes[i]);
        data_len += stored_sizes[i];
    }
    put_header(out, n, index_len, data_len);
    *out_len = want;
    return 0;
}

int prt_unpack_count(const uint8_t *data, size_t len, uint32_t *count, prt_err *err)
{
    if (len < PRT_PACK_HEADER_SIZE)
        return prt_fail(err, PRT_E_TRUNCATED,
                        "truncated: %zu bytes, the header alone needs %d", len, PRT_PACK_HEADER_SIZE);
    if (prt_get32(data) != PRT_PACK_MAGIC)
        return prt_fail(err, PRT_E_MAGIC, "bad magic: not a pyruntime pack");
    uint16_t version = prt_get16(data + 4);
    if (version != PRT_PACK_VERSION)
        return prt_fail(err, PRT_E_VERSION, "unknown format version %u (this build reads %u)",
                        version, PRT_PACK_VERSION);
    if (prt_get16(data + 6) != 0)
        return prt_fail(err, PRT_E_FORMAT, "unknown flags 0x%04x", prt_get16(data + 6));
    uint64_t index_len = prt_get32(data + 12);
    uint64_t data_len = prt_get64(data + 16);
    uint64_t want = PRT_PACK_HEADER_SIZE + index_len;
    if (data_len > UINT64_MAX - want || want + data_len > len)
        return prt_fail(err, PRT_E_TRUNCATED,
                        "truncated: header declares more bytes than the %zu present", len);
    if (want + data_len < len)
        return prt_fail(err, PRT_E_FORMAT, "%llu trailing bytes after the data",
                        (unsigned long long)(len - want - data_len));
    *count = prt_get32(data + 8);
    if ((uint64_t)*count * INDEX_REC > index_len)
        return prt_fail(err, PRT_E_FORMAT, "entry count %u does not fit the %llu-byte index",
                        *count, (unsigned long long)index_len);
    if (prt_xxh3_64(data + PRT_PACK_HEADER_SIZE, (size_t)index_len) != prt_get64(data + 24))
        return prt_fail(err, PRT_E_CHECKSUM, "index checksum mismatch");
    return 0;
}

typedef struct {
    const uint8_t *base;
    const prt_entry *entries;
} name_ctx;

static int cmp_entry_names(const void *a, const void *b, void *arg)
{
    const name_ctx *c = arg;
    const prt_entry *x = &c->entries[*(const uint32_t *)a];
    const prt_entry *y = &c->entries[*(const uint32_t *)b];
    size_t n = x->name_len < y->name_len ? x->name_len : y->name_len;
    int r = memcmp(c->base + x->name_off, c->base + y->name_off, n);
    if (r != 0)
        return r;
    return (x->name_len > y->name_len) - (x->name_len < y->name_len);
}

static int check_duplicates(const uint8_t *base, const prt_entry *entries,
                            uint32_t count, prt_err *err)
{
    if (count < 2)
        return 0;
    uint32_t *order = malloc((size_t)count * sizeof(uint32_t));
    if (order == NULL)
        return prt_fail(err, -ENOMEM, "out of memory");
    for (uint32_t i = 0; i < count; i++)
        order[i] = i;
    name_ctx ctx = {base, entries};
    qsort_r(order, count, sizeof(uint32_t), cmp_entry_names, &ctx);
    int rc = 0;
    for (uint32_t i = 1; i < count && rc == 0; i++) {
        if (cmp_entry_names(&order[i - 1], &order[i], &ctx) == 0) {
            const prt_entry *e = &entries[order[i]];
            rc = prt_fail(err, PRT_E_DUPLICATE, "duplicate entry name '%.*s%s'",
                          SHOW_NAME(e->name_len, base + e->name_off));
        }
    }
    free(order);
    return rc;
}

static int parse_record(const uint8_t *data, const uint8_t *rec, const uint8_t *end,
                        uint32_t i, prt_entry *e, prt_err *err)
{
    if ((size_t)(end - rec) < INDEX_REC)
        return prt_fail(err, PRT_E_FORMAT, "entry %u: index ends inside its record", i);
    e->name_len = prt_get16(rec);
    e->method = rec[2];
    e->raw_size = prt_get64(rec + 4);
    e->comp_size = prt_get64(rec + 12);
    e->checksum = prt_get64(rec + 20);
    e->name_off = (uint64_t)(rec + INDEX_REC - data);
    if ((size_t)(end - rec - INDEX_REC) < e->name_len)
        return prt_fail(err, PRT_E_FORMAT, "entry %u: name runs past the index", i);
    if (rec[3] != 0)
        return prt_fail(err, PRT_E_FORMAT, "entry %u: reserved byte is not zero", i);
    int rc = check_name(rec + INDEX_REC, e->name_len, i, err);
    if (rc != 0)
        return rc;
    if (e->method == 0 && e->comp_size != e->raw_size)
        return prt_fail(err, PRT_E_FORMAT, "entry %u: stored size differs from raw size", i);
    if (e->method == 1 && (e->comp_size == 0 || e->comp_size >= e->raw_size ||
                           e->raw_size / LZ4_MAX_RATIO > e->comp_size))
        return prt_fail(err, PRT_E_FORMAT, "entry %u: impossible LZ4 sizes (%llu -> %llu)", i,
                        (unsigned long long)e->comp_size, (unsigned long long)e->raw_size);
    if (e->method > 1)
        return prt_fail(err, PRT_E_FORMAT, "entry %u: unknown method %u", i, e->method);
    return 0;
}

int prt_unpack_index(const uint8_t *data, size_t len, prt_entry *entries,
                     uint32_t count, uint64_t max_entry, uint64_t max_total,
                     uint64_t *total_raw, prt_err *err)
{
    uint32_t declared = 0;
    int rc = prt_unpack_count(data, len, &declared, err);
    if (rc != 0)
        return rc;
    if (declared != count)
        return prt_fail(err, -EINVAL, "entry array does not match the count");
    const uint8_t *rec = data + PRT_PACK_HEADER_SIZE;
    const uint8_t *end = rec + prt_get32(data + 12);
    uint64_t data_off = (uint64_t)(end - data);
    uint64_t raw_total = 0;
    for (uint32_t i = 0; i < count; i++) {
        prt_entry *e = &entries[i];
        rc = parse_record(data, rec, end, i, e, err);
        if (rc != 0)
            return rc;
        if (e->raw_size > max_entry)
            return prt_fail(err, PRT_E_TOO_LARGE, "entry '%.*s%s' declares %llu bytes, over the %llu-byte limit",
                            SHOW_NAME(e->name_len, data + e->name_off),
                            (unsigned long long)e->raw_size, (unsigned long long)max_entry);
        if (e->comp_size > len - data_off)
            return prt_fail(err, PRT_E_FORMAT, "entry %u: data runs past the end", i);
        e->data_off = data_off;
        e->out_off = raw_total;
        data_off += e->comp_size;
        raw_total += e->raw_size;
        if (raw_total > max_total)
            return prt_fail(err, PRT_E_TOO_LARGE, "entries declare more than the %llu-byte total limit",
                            (unsigned long long)max_total);
        rec += INDEX_REC + e->name_len;
    }
    if (rec != end)
        return prt_fail(err, PRT_E_FORMAT, "%zu unused bytes at the end of the index",
                        (size_t)(end - rec));
    if (data_off != len)
        return prt_fail(err, PRT_E_FORMAT, "entry sizes do not add up to the data length");
    rc = check_duplicates(data, entries, count, err);
    if (rc == 0)
        *total_raw = raw_total;
    return rc;
}

/* One entry: decompress (or copy), then check its checksum; optionally its
 * XXH3-128 hex digest too, while the bytes are still in cache. */
static int unpack_one(const uint8_t *data, size_t len, const prt_entry *e, uint32_t i,
                      uint8_t *out, size_t out_len, char *hex128, prt_err *err)
{
    if (e->data_off + e->comp_size > len || e->out_off + e->raw_size > out_len)
        return prt_fail(err, -EINVAL, "entry %u outside the buffers", i);
    const uint8_t *src = data + e->data_off;
    uint8_t *dst = out + e->out_off;
    if (e->method == 0) {
        memcpy(dst, src, e->raw_size);
    } else {
        int n = LZ4_decompress_safe((const char *)src, (char *)dst,
                                    (int)e->comp_size, (int)e->raw_size);
        if (n < 0 || (uint64_t)n != e->raw_size)
            return prt_fail(err, PRT_E_FORMAT, "entry '%.*s%s': corrupt LZ4 block",
                            SHOW_NAME(e->name_len, data + e->name_off));
    }
    if (prt_xxh3_64(dst, e->raw_size) != e->checksum)
        return prt_fail(err, PRT_E_CHECKSUM, "entry '%.*s%s': checksum mismatch",
                        SHOW_NAME(e->name_len, data + e->name_off));
    if (hex128 != NULL)
        prt_hash_bytes(dst, e->raw_size, hex128);
    return 0;
}

int prt_unpack_data(const uint8_t *data, size_t len, const prt_entry *entries,
                    uint32_t count, uint8_t *out, size_t out_len, prt_err *err)
{
    for (uint32_t i = 0; i < count; i++) {
        int rc = unpack_one(data, len, &entries[i], i, out, out_len, NULL, err);
        if (rc != 0)
            return rc;
    }
    return 0;
}

typedef struct {
    const uint8_t *data;
    size_t len;
    const prt_entry *entries;
    uint32_t first;
    uint8_t *out;
    size_t out_len;
    char *hex128s;
} unpack_ctx;

static int unpack_item(void *arg, size_t i, prt_err *err)
{
    const unpack_ctx *c = arg;
    uint32_t e = c->first + (uint32_t)i;
    char *hex = c->hex128s != NULL ? c->hex128s + (size_t)e * PRT_HEX128_LEN : NULL;
    return unpack_one(c->data, c->len, &c->entries[e], e, c->out, c->out_len, hex, err);
}

int prt_unpack_data_par(prt_pool *pool, const uint8_t *data, size_t len, const prt_entry *entries,
                        uint32_t n, uint32_t first, uint32_t count, uint8_t *out, size_t out_len,
                        unsigned nthreads, char *hex128s, prt_err *err)
{
    if (first > n || count > n - first)
        return prt_fail(err, -EINVAL, "entries %u..%u of %u", first, first + count, n);
    unpack_ctx c = {data, len, entries, first, out, out_len, hex128s};
    return prt_parallel_for(pool, count, nthreads, unpack_item, &c, err);
}

/* The blobs of a bundle being loaded are unpacked in the background while
 * Python checks the kernel table: on C threads, because a Python one would
 * wait for the GIL that the checking holds. prt_unpack_finish then puts the
 * caller to work on what is left, so no core idles while it waits. */
typedef struct {
    prt_par par;
    unpack_ctx c;
} background;

static void unpack_now(prt_unpack_job *job)
{
    job->rc = prt_unpack_data_par(NULL, job->data, job->len, job->entries, job->n, job->first,
                                  job->count, job->out, job->out_len, 1, job->hex128s, &job->err);
}

int prt_unpack_start(prt_pool *pool, prt_unpack_job *job, prt_err *err)
{
    (void)err;
    job->rc = 0;
    job->err.code = 0;
    job->err.msg[0] = '\0';
    job->background = NULL;
    if (job->first > job->n || job->count > job->n - job->first) {
        job->rc = prt_fail(&job->err, -EINVAL, "entries %u..%u of %u", job->first,
                           job->first + job->count, job->n);
        return 0;
    }
    background *bg = malloc(sizeof(*bg));
    if (bg == NULL) {
        unpack_now(job);  /* no memory to hand it over: the work is done now */
        return 0;
    }
    bg->c = (unpack_ctx){job->data, job->len, job->entries, job->first, job->out, job->out_len,
                         job->hex128s};
    if (prt_par_begin(&bg->par, pool, job->count, job->nthreads, unpack_item, &bg->c, &job->err) != 0) {
        free(bg);
        unpack_now(job);
        return 0;
    }
    job->background = bg;
    return 0;
}

int prt_unpack_finish(prt_unpack_job *job, prt_err *err)
{
    background *bg = job->background;
    if (bg != NULL) {
        job->background = NULL;
        job->rc = prt_par_end(&bg->par, &job->err);
        free(bg);
    }
    if (job->rc != 0 && err != NULL)
        *err = job->err;
    return job->rc;
}
