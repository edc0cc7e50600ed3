/* What every unit of the C core shares, and nothing else: the ABI stamp,
 * the error helper behind the one return-code contract (0, or a negative
 * errno/PRT_E_* status with a message in prt_err) and the XXH3 digests of
 * one buffer (frames, pack entries and directory digests all use them).
 * Every other unit depends on this one; none on each other's helpers. */
#define _GNU_SOURCE
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include <xxhash.h>

#include "prt_core.h"
#include "prt_xxh.h"

int prt_abi_version(void)
{
    return PRT_ABI_VERSION;
}

int prt_fail(prt_err *err, int code, const char *fmt, ...)
{
    if (err != NULL) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err->msg, sizeof(err->msg), fmt, ap);
        va_end(ap);
        err->code = code;
    }
    return code;
}

/* ---- the baseline table: the linked libxxhash ---- */
static uint64_t lib_hash64(const void *data, size_t len)
{
    return (uint64_t)XXH3_64bits(data, len);
}

static void lib_canonical(XXH128_hash_t h, uint8_t out[16])
{
    XXH128_canonical_t c;
    XXH128_canonicalFromHash(&c, h);
    memcpy(out, c.digest, 16);
}

static void lib_hash128(const void *data, size_t len, uint8_t out[16])
{
    lib_canonical(XXH3_128bits(data, len), out);
}

static void *lib_state_new(void)
{
    XXH3_state_t *s = XXH3_createState();
    if (s != NULL)
        XXH3_128bits_reset(s);
    return s;
}

static int lib_update(void *state, const void *data, size_t len)
{
    return XXH3_128bits_update(state, data, len) == XXH_OK ? 0 : -1;
}

static void lib_digest(const void *state, uint8_t out[16])
{
    lib_canonical(XXH3_128bits_digest(state), out);
}

static void lib_state_free(void *state)
{
    XXH3_freeState(state);
}

static const prt_xxh_impl xxh_lib = {
    "libxxhash", lib_hash64, lib_hash128, lib_state_new,
    lib_update, lib_digest, lib_state_free,
};

/* Asked on every call: __builtin_cpu_supports reads a word libgcc fills in
 * at load time, so this costs less than keeping a choice of our own. */
const prt_xxh_impl *prt_xxh(void)
{
#if PRT_XXH_HAVE_AVX2
    if (__builtin_cpu_supports("avx2"))
        return &prt_xxh_avx2;
#endif
    return &xxh_lib;
}

const char *prt_xxh_impl_name(void)
{
    return prt_xxh()->name;
}

uint64_t prt_xxh3_64(const uint8_t *data, size_t len)
{
    return prt_xxh()->hash64(data, len);
}

void prt_hex128(const uint8_t digest[16], char *out_hex)
{
    static const char digits[] = "0123456789abcdef";
    for (int i = 0; i < 16; i++) {
        out_hex[2 * i] = digits[digest[i] >> 4];
        out_hex[2 * i + 1] = digits[digest[i] & 15];
    }
    out_hex[32] = '\0';
}

void prt_hash_bytes(const uint8_t *data, size_t len, char *out_hex)
{
    uint8_t digest[16];
    prt_xxh()->hash128(data, len, digest);
    prt_hex128(digest, out_hex);
}
