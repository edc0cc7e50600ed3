/* A parallel for-loop over threads that live only for the call.
 *
 * The bundle hot paths are many independent items (LZ4 blocks to unpack,
 * kernel directories to write) whose cost is memory copies and file-system
 * calls, not Python: spreading them over a few threads cuts their wall time
 * on any multi-core machine. No thread outlives the call, nothing is shared
 * but the next-item counter and the first failure, and a failed
 * pthread_create only means fewer helpers (the caller's thread always
 * works), so this never fails for lack of threads. */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <string.h>

#include "prt_core.h"

#define PRT_MAX_THREADS 64u

typedef struct {
    size_t n;
    prt_item_fn fn;
    void *ctx;
    atomic_size_t next;
    atomic_int stop;
    pthread_mutex_t lock;  /* guards the failure below */
    int fail_rc;
    size_t fail_i;
    prt_err fail_err;
} par_state;

static void note_failure(par_state *s, size_t i, int rc, const prt_err *err)
{
    pthread_mutex_lock(&s->lock);
    /* keep the lowest failing item, so a failure reads the same whatever
     * the thread timing */
    if (s->fail_rc == 0 || i < s->fail_i) {
        s->fail_rc = rc;
        s->fail_i = i;
        s->fail_err = *err;
    }
    pthread_mutex_unlock(&s->lock);
    atomic_store(&s->stop, 1);
}

static void *run_items(void *arg)
{
    par_state *s = arg;
    prt_err err;
    while (!atomic_load(&s->stop)) {
        size_t i = atomic_fetch_add(&s->next, 1);
        if (i >= s->n)
            break;
        err.code = 0;
        err.msg[0] = '\0';
        int rc = s->fn(s->ctx, i, &err);
        if (rc != 0)
            note_failure(s, i, rc, &err);
    }
    return NULL;
}

int prt_parallel_for(size_t n, unsigned nthreads, prt_item_fn fn, void *ctx, prt_err *err)
{
    par_state s;
    memset(&s, 0, sizeof(s));
    s.n = n;
    s.fn = fn;
    s.ctx = ctx;
    atomic_init(&s.next, 0);
    atomic_init(&s.stop, 0);
    if (pthread_mutex_init(&s.lock, NULL) != 0)
        return prt_fail(err, -ENOMEM, "cannot create a mutex");
    if (nthreads > PRT_MAX_THREADS)
        nthreads = PRT_MAX_THREADS;
    if ((size_t)nthreads > n)
        nthreads = (unsigned)n;
    pthread_t helpers[PRT_MAX_THREADS];
    unsigned started = 0;
    for (unsigned t = 1; t < nthreads; t++) {
        if (pthread_create(&helpers[started], NULL, run_items, &s) != 0)
            break;
        started++;
    }
    run_items(&s);
    for (unsigned t = 0; t < started; t++)
        pthread_join(helpers[t], NULL);
    pthread_mutex_destroy(&s.lock);
    if (s.fail_rc != 0 && err != NULL)
        *err = s.fail_err;
    return s.fail_rc;
}
