/* Internal header: the public declarations (shared with cffi) plus the
 * little-endian helpers the three parts use. */
#ifndef PRT_CORE_H
#define PRT_CORE_H

#include <stddef.h>
#include <stdint.h>

#include "prt_core.cdef.h"

#define PRT_FRAME_MAGIC 0x46545250u /* "PRTF" read as little-endian */
#define PRT_FRAME_VERSION 1u
#define PRT_PACK_MAGIC 0x50545250u  /* "PRTP" */
#define PRT_PACK_VERSION 1u

typedef struct prt_task prt_task;

int prt_fail(prt_err *err, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* parallel.c: run fn(ctx, i, err) for every i < n on up to nthreads threads
 * (the caller's included; the others from pool, or started for the call
 * when pool is NULL). After a failure no new item starts; the return code
 * and err are those of the lowest failing item. */
typedef int (*prt_item_fn)(void *ctx, size_t i, prt_err *err);
int prt_parallel_for(prt_pool *pool, size_t n, unsigned nthreads, prt_item_fn fn, void *ctx,
                     prt_err *err);

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
