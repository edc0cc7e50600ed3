/* Declarations that cffi parses (csrc/build_ffi.py reads this file).
 * Plain C declarations only: no includes, no macros with expressions.
 * Every int-returning function follows one contract: 0 on success, or a
 * negative value that is either -errno or one of the PRT_E_* statuses. */

#define PRT_ABI_VERSION 8
#define PRT_FRAME_HEADER_SIZE 32
#define PRT_PACK_HEADER_SIZE 32
#define PRT_HEX128_LEN 33
#define PRT_ERRMSG_LEN 256

/* Statuses beyond errno; -errno values are always above -4096. */
#define PRT_E_EOF -5001
#define PRT_E_TRUNCATED -5002
#define PRT_E_MAGIC -5003
#define PRT_E_VERSION -5004
#define PRT_E_TOO_LARGE -5005
#define PRT_E_CHECKSUM -5006
#define PRT_E_FORMAT -5007
#define PRT_E_NAME -5008
#define PRT_E_DUPLICATE -5009
#define PRT_E_FILETYPE -5010
#define PRT_E_CHANGED -5011

typedef struct {
    int code;
    char msg[256];
} prt_err;

/* parallel.c: worker threads kept between calls. Functions taking a pool
 * use its workers as helpers; NULL starts threads for the call. An idle
 * worker, and a caller waiting for helpers, poll for spin_ns before they
 * sleep (0: sleep at once). */
typedef struct prt_pool prt_pool;
int prt_pool_new(unsigned nthreads, uint64_t spin_ns, prt_pool **out, prt_err *err);
void prt_pool_free(prt_pool *pool);
unsigned prt_pool_size(const prt_pool *pool);

typedef struct {
    uint16_t version;
    uint16_t kind;
    uint64_t job_id;
    uint64_t length;
    uint64_t checksum;
} prt_frame_header;

typedef struct {
    uint64_t name_off;   /* offset of the name inside the packed buffer */
    uint32_t name_len;
    uint32_t method;     /* 0 stored, 1 lz4 block */
    uint64_t raw_size;
    uint64_t comp_size;
    uint64_t data_off;   /* offset of the stored block inside the packed buffer */
    uint64_t checksum;   /* XXH3-64 of the raw bytes */
    uint64_t out_off;    /* offset of this entry in the caller's output buffer */
} prt_entry;

int prt_abi_version(void);

/* framing.c */
int prt_write_frame(int fd, uint16_t kind, uint64_t job_id,
                    const uint8_t *payload, size_t len);
int prt_read_header(int fd, uint64_t max_len, prt_frame_header *out);
int prt_read_payload(int fd, uint8_t *buf, size_t len, uint64_t checksum);
int prt_set_pdeathsig(int sig);

/* hashing.c */
uint64_t prt_xxh3_64(const uint8_t *data, size_t len);
const char *prt_xxh_impl_name(void); /* "avx2" or "libxxhash": the XXH3 build this CPU runs */
void prt_hash_bytes(const uint8_t *data, size_t len, char *out_hex);
int prt_hash_file(const char *path, char *out_hex, prt_err *err);
int prt_hash_dir(const char *path, char *out_hex, prt_err *err);

/* packing.c */
int prt_pack_bound(size_t n, const size_t *name_lens, const size_t *sizes,
                   size_t *out_bound, prt_err *err);
int prt_pack(size_t n, const char *const *names, const size_t *name_lens,
             const uint8_t *const *datas, const size_t *sizes,
             uint8_t *out, size_t out_cap, size_t *out_len, prt_err *err);
int prt_unpack_count(const uint8_t *data, size_t len, uint32_t *count, prt_err *err);
int prt_unpack_index(const uint8_t *data, size_t len, prt_entry *entries,
                     uint32_t count, uint64_t max_entry, uint64_t max_total,
                     uint64_t *total_raw, prt_err *err);
int prt_unpack_data(const uint8_t *data, size_t len, const prt_entry *entries,
                    uint32_t count, uint8_t *out, size_t out_len, prt_err *err);
/* prt_unpack_data of entries first .. first + count - 1 (of the n the index
 * gave) over up to nthreads threads; hex128s, when not NULL, receives
 * entry i's XXH3-128 hex digest at i * PRT_HEX128_LEN. */
int prt_unpack_data_par(prt_pool *pool, const uint8_t *data, size_t len,
                        const prt_entry *entries, uint32_t n,
                        uint32_t first, uint32_t count, uint8_t *out, size_t out_len,
                        unsigned nthreads, char *hex128s, prt_err *err);
/* prt_unpack_data_par in the background: prt_unpack_start hands the
 * entries to nthreads helpers (pool workers, or threads of their own) and
 * returns at once (or, when that cannot be done, after doing the work);
 * prt_unpack_finish works on what is left itself, waits for the helpers
 * and gives the result. Every start must be finished, and nothing the job
 * points at may change or be freed before. */
typedef struct {
    const uint8_t *data;
    size_t len;
    const prt_entry *entries;
    uint32_t n;
    uint32_t first;
    uint32_t count;
    uint8_t *out;
    size_t out_len;
    unsigned nthreads;
    char *hex128s;
    int rc;                        /* private from here on */
    prt_err err;
    void *background;
} prt_unpack_job;

int prt_unpack_start(prt_pool *pool, prt_unpack_job *job, prt_err *err);
int prt_unpack_finish(prt_unpack_job *job, prt_err *err);
/* Whether a bundle's kernel table passes every check of the reader's
 * common case (bundle_table.c): 0, else PRT_E_FORMAT. hashes and names are
 * NUL-terminated strings back to back; kernel k owns kernel_files[k] files,
 * in order; numbers holds nfiles blob indexes, then their offsets, then
 * their sizes: file i lies at numbers[nfiles + i] of blob numbers[i]. */
int prt_table_is_plain(const char *hashes, size_t hashes_len, size_t nkernels,
                       const uint32_t *kernel_files, const char *names, size_t names_len,
                       size_t nfiles, const uint64_t *numbers, const uint64_t *blob_lens,
                       size_t nblobs, prt_err *err);
/* One entry packed on its own (what prt_pack does per entry, at level 0),
 * for callers that assemble a container later from entries packed ahead of
 * time. level: 0 is LZ4's fast mode, 1 to 12 its HC mode at that level. */
int prt_entry_bound(size_t len, size_t *out_bound, prt_err *err);
int prt_pack_entry(const uint8_t *src, size_t len, int level, uint8_t *dst, size_t cap,
                   uint8_t *method, size_t *stored, uint64_t *checksum,
                   char *hex128, prt_err *err);
int prt_pack_stored_len(size_t n, const size_t *name_lens, const size_t *stored_sizes,
                        size_t *out_len, prt_err *err);
/* stored NULL: write only the header and index (the blocks follow them, in
 * order, wherever the caller puts them); *out_len is then their length. */
int prt_pack_stored(size_t n, const char *const *names, const size_t *name_lens,
                    const uint8_t *methods, const uint64_t *raw_sizes,
                    const uint64_t *checksums, const uint8_t *const *stored,
                    const size_t *stored_sizes, uint8_t *out, size_t out_cap,
                    size_t *out_len, prt_err *err);

/* kernel_dirs.c */
typedef struct {
    const uint8_t *const *blobs;   /* file i is blobs[blob_of[i]][offs[i]..+sizes[i]) */
    const size_t *blob_lens;
    size_t nblobs;
    const char *names;             /* nfiles NUL-terminated names, back to back */
    size_t names_len;
    const uint32_t *blob_of;
    const uint64_t *offs;
    const uint64_t *sizes;
    size_t nfiles;
    const char *sentinel;          /* sentinel_len 0: no swap; else in *.json files */
    size_t sentinel_len;           /* each sentinel becomes prefix + final name */
    const char *prefix;
    size_t prefix_len;
} prt_file_table;

/* What became of a kernel (prt_kernel_job.outcome). */
#define PRT_KERNEL_NOT_TRIED -1
#define PRT_KERNEL_PRESENT 0   /* a directory with files holds its name (another
                                  restorer was first): the copy is dropped */
#define PRT_KERNEL_RENAMED 1   /* renamed into place (onto nothing or an empty
                                  directory) */
#define PRT_KERNEL_REPLACED 2  /* renamed into place after unlinking the
                                  non-directory that held its name */
#define PRT_KERNEL_BLOCKED 3   /* a non-directory (file, FIFO, socket, device,
                                  symlink) holds its name and was left there:
                                  replace was 0, or unlinking it failed (err_no) */

typedef struct {
    uint64_t first;                /* files first .. first + nfiles - 1 of the table */
    uint64_t nfiles;
    int outcome;                   /* out: PRT_KERNEL_* */
    int err_no;                    /* out: with PRT_KERNEL_BLOCKED, why the
                                      non-directory could not be unlinked (0:
                                      replace was 0) */
    uint64_t bytes;                /* out: bytes written (after sentinel swaps) */
} prt_kernel_job;

/* job_names: per job its tmp name then its final name, NUL-terminated,
 * back to back (both plain names under root). Each tmp directory is held
 * under an flock from its mkdir until it is renamed or removed. replace: 1
 * unlinks a non-directory holding a final name (never following a symlink)
 * and renames the kernel onto it, 0 leaves it (PRT_KERNEL_BLOCKED). */
int prt_write_kernels(prt_pool *pool, const char *root, const prt_file_table *table,
                      const char *job_names, size_t job_names_len,
                      prt_kernel_job *jobs, size_t njobs,
                      unsigned nthreads, int do_fsync, int replace, prt_err *err);
/* names[i] NULL: slot i is left to the caller. */
int prt_read_files(const char *dir, uint32_t n, const char *const *names,
                   const uint64_t *offsets, const uint64_t *sizes,
                   uint8_t *out, size_t out_len, prt_err *err);
