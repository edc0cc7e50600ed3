/* A parallel for-loop, on a pool of worker threads kept between calls or
 * on threads that live only for the call.
 *
 * The bundle hot paths are many independent items (LZ4 blocks to unpack,
 * kernel directories to write) whose cost is memory copies and file-system
 * calls, not Python: spreading them over a few threads cuts their wall time
 * on any multi-core machine. Starting a thread costs 20-70 us (more on a
 * VM), about what the work of a whole small call is, so the Python side
 * keeps a pool (prt_pool_new) and passes it in; NULL means a thread per
 * helper, started and joined in the call.
 *
 *   caller --submit--> [pool queue] --> worker: run_items()
 *     |                                      |
 *     +-- run_items() itself                 |
 *     +-- cancel helpers not started yet     |
 *     +-- wait for the started ones <--done--+
 *
 * The caller always works on the items, so nothing ever waits for a task
 * that has not started: a busy pool means fewer helpers, never a deadlock,
 * also when a task on a worker runs a loop of its own. Nothing is shared
 * but the next-item counter and the first failure, and a thread that
 * cannot be started only means fewer helpers. The pool is the caller's
 * object: no global state. prt_par_begin/prt_par_end split the loop for a
 * caller with other work meanwhile (a bundle's load checks its kernel table
 * while its blobs unpack): the caller joins the items at the end. */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <sched.h>
#include <string.h>
#include <time.h>

#include "prt_core.h"

/* ---- the pool ---- */

struct prt_pool {
    pthread_mutex_t lock;   /* guards the queue, task states and stop */
    pthread_cond_t work;    /* a task was queued, or stop was set */
    pthread_cond_t done;    /* a task finished */
    prt_task *head, *tail;
    int stop;
    atomic_uint queued;     /* tasks in the queue, and stop: read unlocked by spinners */
    uint64_t spin_ns;
    unsigned nthreads;
    pthread_t threads[PRT_MAX_THREADS];
};

/* Monotonic nanoseconds, or 0 when the clock cannot be read: the pollers
 * below then stop polling and sleep. */
static uint64_t now_ns(void)
{
    struct timespec ts;
    if (clock_gettime(CLOCK_MONOTONIC, &ts) != 0)
        return 0;
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#else
    sched_yield();
#endif
}

/* Poll *flag for up to spin_ns; returns whether it became non-zero. Waking
 * a thread asleep on a futex costs 50-100 us on the virtual machines this
 * runs on (the idle vCPU has to be woken too), more than a whole small
 * bundle call: a thread that expects more work soon polls for a while
 * first. It yields now and then, so a runnable thread that needs the CPU
 * (the Python caller) gets it. */
static int spin_until(atomic_uint *flag, uint64_t spin_ns)
{
    uint64_t start = spin_ns > 0 ? now_ns() : 0;
    if (start == 0)
        return atomic_load(flag) != 0;
    uint64_t end = start + spin_ns;
    for (unsigned i = 1;; i++) {
        if (atomic_load(flag) != 0)
            return 1;
        cpu_relax();
        if (i % 64 == 0) {
            uint64_t t = now_ns();
            if (t == 0 || t >= end)
                return atomic_load(flag) != 0;
            sched_yield();
        }
    }
}

static void *worker(void *arg)
{
    prt_pool *p = arg;
    pthread_mutex_lock(&p->lock);
    for (;;) {
        if (p->head == NULL && !p->stop && p->spin_ns > 0) {
            pthread_mutex_unlock(&p->lock);
            (void)spin_until(&p->queued, p->spin_ns);
            pthread_mutex_lock(&p->lock);
        }
        while (p->head == NULL && !p->stop)
            pthread_cond_wait(&p->work, &p->lock);
        if (p->head == NULL)
            break;  /* stop, and nothing left to run */
        prt_task *t = p->head;
        p->head = t->next;
        if (p->head == NULL)
            p->tail = NULL;
        atomic_fetch_sub(&p->queued, 1);
        t->state = PRT_TASK_RUNNING;
        pthread_mutex_unlock(&p->lock);
        t->run(t);
        pthread_mutex_lock(&p->lock);
        t->state = PRT_TASK_DONE;  /* after this the owner may free the task */
        pthread_cond_broadcast(&p->done);
    }
    pthread_mutex_unlock(&p->lock);
    return NULL;
}

int prt_pool_new(unsigned nthreads, uint64_t spin_ns, prt_pool **out, prt_err *err)
{
    *out = NULL;
    if (nthreads == 0 || nthreads > PRT_MAX_THREADS)
        return prt_fail(err, -EINVAL, "a pool of %u threads (1 to %u)", nthreads, PRT_MAX_THREADS);
    prt_pool *p = calloc(1, sizeof(*p));
    if (p == NULL)
        return prt_fail(err, -ENOMEM, "no memory for a thread pool");
    if (pthread_mutex_init(&p->lock, NULL) != 0) {
        free(p);
        return prt_fail(err, -ENOMEM, "cannot create a mutex");
    }
    if (pthread_cond_init(&p->work, NULL) != 0 || pthread_cond_init(&p->done, NULL) != 0) {
        pthread_mutex_destroy(&p->lock);
        free(p);  /* a condition variable that did init holds no resource on Linux */
        return prt_fail(err, -ENOMEM, "cannot create a condition variable");
    }
    atomic_init(&p->queued, 0);
    p->spin_ns = spin_ns;
    for (unsigned t = 0; t < nthreads; t++) {
        if (pthread_create(&p->threads[p->nthreads], NULL, worker, p) != 0)
            break;  /* fewer workers; the callers work too */
        p->nthreads++;
    }
    *out = p;
    return 0;
}

void prt_pool_free(prt_pool *p)
{
    if (p == NULL)
        return;
    pthread_mutex_lock(&p->lock);
    p->stop = 1;
    atomic_fetch_add(&p->queued, 1);  /* ends the spinners' polling */
    pthread_cond_broadcast(&p->work);
    pthread_mutex_unlock(&p->lock);
    for (unsigned t = 0; t < p->nthreads; t++)
        pthread_join(p->threads[t], NULL);
    pthread_cond_destroy(&p->work);
    pthread_cond_destroy(&p->done);
    pthread_mutex_destroy(&p->lock);
    free(p);
}

unsigned prt_pool_size(const prt_pool *p)
{
    return p == NULL ? 0 : p->nthreads;
}

void prt_pool_submit(prt_pool *p, prt_task *t)
{
    pthread_mutex_lock(&p->lock);
    t->next = NULL;
    t->state = PRT_TASK_QUEUED;
    if (p->tail != NULL)
        p->tail->next = t;
    else
        p->head = t;
    p->tail = t;
    atomic_fetch_add(&p->queued, 1);
    pthread_cond_signal(&p->work);
    pthread_mutex_unlock(&p->lock);
}

/* Take t back if no worker started it (returns 1); else wait until it is
 * done (returns 0). Either way the pool no longer refers to t. */
int prt_pool_reclaim(prt_pool *p, prt_task *t)
{
    pthread_mutex_lock(&p->lock);
    if (t->state == PRT_TASK_QUEUED) {
        prt_task **link = &p->head, *prev = NULL;
        while (*link != t) {
            prev = *link;
            link = &(*link)->next;
        }
        *link = t->next;
        if (p->tail == t)
            p->tail = prev;
        atomic_fetch_sub(&p->queued, 1);
        t->state = PRT_TASK_DONE;
        pthread_mutex_unlock(&p->lock);
        return 1;
    }
    while (t->state != PRT_TASK_DONE)
        pthread_cond_wait(&p->done, &p->lock);
    pthread_mutex_unlock(&p->lock);
    return 0;
}

/* ---- the loop ---- */

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

static void run_helper(prt_task *t)
{
    par_state *s = ((par_helper *)t)->s;
    atomic_fetch_add(&s->busy, 1);
    run_items(s);
    atomic_fetch_sub(&s->busy, 1);
}

int prt_par_begin(prt_par *p, prt_pool *pool, size_t n, unsigned nhelpers, prt_item_fn fn,
                  void *ctx, prt_err *err)
{
    par_state *s = &p->s;
    memset(s, 0, sizeof(*s));
    s->n = n;
    s->fn = fn;
    s->ctx = ctx;
    atomic_init(&s->next, 0);
    atomic_init(&s->stop, 0);
    atomic_init(&s->busy, 0);
    if (pthread_mutex_init(&s->lock, NULL) != 0)
        return prt_fail(err, -ENOMEM, "cannot create a mutex");
    if (nhelpers > PRT_MAX_THREADS)
        nhelpers = PRT_MAX_THREADS;
    if ((size_t)nhelpers > n)
        nhelpers = (unsigned)n;
    p->pool = pool;
    p->started = 0;
    for (unsigned t = 0; t < nhelpers; t++) {
        if (pool != NULL) {
            p->helpers[t].task.run = run_helper;
            p->helpers[t].s = s;
            prt_pool_submit(pool, &p->helpers[t].task);
        } else if (pthread_create(&p->threads[t], NULL, run_items, s) != 0) {
            break;  /* fewer helpers: the caller works too */
        }
        p->started++;
    }
    return 0;
}

int prt_par_end(prt_par *p, prt_err *err)
{
    par_state *s = &p->s;
    run_items(s);
    if (p->pool != NULL && p->started > 0) {
        /* the helpers still at work are about done: poll a while rather
         * than sleep (see spin_until); the reclaims below then wait for
         * nothing, or take back the helpers no worker took up */
        uint64_t t = now_ns(), end = t + p->pool->spin_ns;
        while (t != 0 && t < end && atomic_load(&s->busy) > 0) {
            cpu_relax();
            t = now_ns();
        }
    }
    for (unsigned t = 0; t < p->started; t++) {
        if (p->pool != NULL)
            (void)prt_pool_reclaim(p->pool, &p->helpers[t].task);
        else
            pthread_join(p->threads[t], NULL);
    }
    pthread_mutex_destroy(&s->lock);
    if (s->fail_rc != 0 && err != NULL)
        *err = s->fail_err;
    return s->fail_rc;
}

int prt_parallel_for(prt_pool *pool, size_t n, unsigned nthreads, prt_item_fn fn, void *ctx,
                     prt_err *err)
{
    prt_par p;
    int rc = prt_par_begin(&p, pool, n, nthreads > 1 ? nthreads - 1 : 0, fn, ctx, err);
    return rc != 0 ? rc : prt_par_end(&p, err);
}
