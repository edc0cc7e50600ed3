/* Internal header: the public declarations (shared with cffi) plus the
 * little-endian helpers the three parts use. */
#ifndef PRT_CORE_H
#define PRT_CORE_H

#include <stddef.h>
#include <pthread.h>
#include <stdint.h>

#include "prt_core.cdef.h"

#define PRT_FRAME_MAGIC 0x46545250u /* "PRTF" read as little-endian */
#define PRT_FRAME_VERSION 1u
#define PRT_PACK_MAGIC 0x50545250u  /* "PRTP" */
#define PRT_PACK_VERSION 1u

typedef struct prt_task prt_task;

/* core.c: the error helper and the one-buffer XXH3 digests. */
int prt_fail(prt_err *err, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
void prt_hex128(const uint8_t digest[16], char *out_hex);

/* A unit of work for a pool worker; the owner keeps it alive until
 * prt_pool_reclaim returned. */
enum { PRT_TASK_QUEUED = 0, PRT_TASK_RUNNING = 1, PRT_TASK_DONE = 2 };
struct prt_task {
    void (*run)(prt_task *task);
    prt_task *next;
    int state;
};
void prt_pool_submit(prt_pool *pool, prt_task *task);
int prt_pool_reclaim(prt_pool *pool, prt_task *task);

/* parallel.c: run fn(ctx, i, err) for every i < n on up to nthreads threads
 * (the caller's included; the others from pool, or started for the call
 * when pool is NULL). After a failure no new item starts; the return code
 * and err are those of the lowest failing item. */
typedef int (*prt_item_fn)(void *ctx, size_t i, prt_err *err);
int prt_parallel_for(prt_pool *pool, size_t n, unsigned nthreads, prt_item_fn fn, void *ctx,
                     prt_err *err);

/* The same loop in two halves, for a caller with other work meanwhile:
 * prt_par_begin hands the items to up to nhelpers helpers and returns;
 * prt_par_end makes the caller work on what is left, waits for the helpers
 * and gives the result. Every begin that returned 0 must be ended, and p
 * and ctx must stay in place until then. */
#define PRT_MAX_THREADS 64u
typedef struct {
    size_t n;
    prt_item_fn fn;
    void *ctx;
    _Atomic size_t next;
    _Atomic int stop;
    _Atomic unsigned busy;  /* helpers inside the loop */
    pthread_mutex_t lock;  /* guards the failure below */
    int fail_rc;
    size_t fail_i;
    prt_err fail_err;
} par_state;
typedef struct {
    prt_task task;  /* first: a task pointer is a helper pointer */
    par_state *s;
} par_helper;
typedef struct {
    par_state s;
    prt_pool *pool;
    unsigned started;
    par_helper helpers[PRT_MAX_THREADS];  /* with a pool */
    pthread_t threads[PRT_MAX_THREADS];   /* without one */
} prt_par;
int prt_par_begin(prt_par *p, prt_pool *pool, size_t n, unsigned nhelpers, prt_item_fn fn,
                  void *ctx, prt_err *err);
int prt_par_end(prt_par *p, prt_err *err);

static inline void prt_put16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}

static inline void prt_put32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static inline void prt_put64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static inline uint16_t prt_get16(const uint8_t *p)
{
    return (uint16_t)(p[0] | (p[1] << 8));
}

static inline uint32_t prt_get32(const uint8_t *p)
{
    uint32_t v = 0;
    for (int i = 3; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

static inline uint64_t prt_get64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

#endif
