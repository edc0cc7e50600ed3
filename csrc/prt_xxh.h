/* XXH3 behind a table of functions, so hashing.c can pick one build at run
 * time: the system libxxhash (compiled for baseline x86-64, SSE2) or
 * xxh_avx2.c (the same header-only code compiled for AVX2). XXH3 output
 * does not depend on the vector width, only the speed does.
 *
 * A streaming state is opaque: each table creates, feeds, digests and frees
 * its own, since the two builds must never share a state. 128-bit digests
 * come out in canonical (big-endian) byte order. */
#ifndef PRT_XXH_H
#define PRT_XXH_H

#include <stddef.h>
#include <stdint.h>

/* The AVX2 build needs GCC's per-file target pragma and an x86-64 target. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define PRT_XXH_HAVE_AVX2 1
#else
#define PRT_XXH_HAVE_AVX2 0
#endif

typedef struct {
    const char *name;
    uint64_t (*hash64)(const void *data, size_t len);
    void (*hash128)(const void *data, size_t len, uint8_t out[16]);
    void *(*state_new)(void);  /* a reset seed-0 state, NULL when out of memory */
    int (*update)(void *state, const void *data, size_t len); /* 0 or -1 */
    void (*digest)(const void *state, uint8_t out[16]);
    void (*state_free)(void *state);
} prt_xxh_impl;

#if PRT_XXH_HAVE_AVX2
extern const prt_xxh_impl prt_xxh_avx2;
#endif

/* The fastest table this CPU runs. */
const prt_xxh_impl *prt_xxh(void);

#endif
