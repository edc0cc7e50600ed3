/* XXH3 compiled for AVX2, from the system's header-only xxhash.h (no
 * vendored source). Debian's libxxhash is built for baseline x86-64 and
 * runs XXH3 at about a third of the AVX2 speed; hashing.c calls the table
 * defined here only when the CPU reports AVX2 (prt_xxh in core.c).
 * The pragma must come before xxhash.h: GCC then defines __AVX2__,
 * so xxhash.h pulls in <immintrin.h> and inlines the AVX2 kernels. */
#include "prt_xxh.h"

#if PRT_XXH_HAVE_AVX2
#pragma GCC target("avx2")
#define XXH_INLINE_ALL
#define XXH_VECTOR XXH_AVX2
#include <xxhash.h>

static uint64_t avx2_hash64(const void *data, size_t len)
{
    return (uint64_t)XXH3_64bits(data, len);
}

static void avx2_canonical(XXH128_hash_t h, uint8_t out[16])
{
    XXH128_canonical_t c;
    XXH128_canonicalFromHash(&c, h);
    for (int i = 0; i < 16; i++)
        out[i] = c.digest[i];
}

static void avx2_hash128(const void *data, size_t len, uint8_t out[16])
{
    avx2_canonical(XXH3_128bits(data, len), out);
}

static void *avx2_state_new(void)
{
    XXH3_state_t *s = XXH3_createState();
    if (s != NULL)
        XXH3_128bits_reset(s);
    return s;
}

static int avx2_update(void *state, const void *data, size_t len)
{
    return XXH3_128bits_update(state, data, len) == XXH_OK ? 0 : -1;
}

static void avx2_digest(const void *state, uint8_t out[16])
{
    avx2_canonical(XXH3_128bits_digest(state), out);
}

static void avx2_state_free(void *state)
{
    XXH3_freeState(state);
}

const prt_xxh_impl prt_xxh_avx2 = {
    "avx2", avx2_hash64, avx2_hash128, avx2_state_new,
    avx2_update, avx2_digest, avx2_state_free,
};
#endif
