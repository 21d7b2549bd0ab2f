/* crypto: the few primitives authentication needs, from OpenSSL's libcrypto
 * (never hand-written): PBKDF2 for password hashes (deepstream's file-auth
 * format), random bytes from the OS, SHA-256 for storing tokens, a
 * constant-time comparison and base64.
 *
 * Lua API (all raise on misuse, none on bad input data):
 *   core.pbkdf2(password, salt, iterations, key_length, digest) -> bytes | nil, err
 *     (on the calling thread; workers.c runs the same off the loop thread)
 *   core.random_bytes(n)        -> n bytes from the OS's random source | nil, err
 *   core.sha256(s)              -> 32 bytes
 *   core.equal(a, b)            -> boolean, time independent of where they differ
 *   core.base64_encode(s)       -> text (standard alphabet, padded, no newlines)
 */
#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <sys/random.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/sha.h>

#include "core.h"
#include "crypto.h"

/* Bounds keep one call's time and memory sane whatever a config file or a CLI
 * argument says: 10 million iterations is tens of seconds already. */
#define CRYPTO_MAX_ITERATIONS 10000000
#define CRYPTO_MAX_KEY_LENGTH 1024
#define CRYPTO_MAX_RANDOM 4096

const char *ms_pbkdf2_check(lua_State *L, int idx, ms_pbkdf2_args *a) {
    a->password = luaL_checklstring(L, idx, &a->plen);
    a->salt = luaL_checklstring(L, idx + 1, &a->slen);
    lua_Integer iterations = luaL_checkinteger(L, idx + 2);
    lua_Integer keylen = luaL_checkinteger(L, idx + 3);
    const char *digest_name = luaL_checkstring(L, idx + 4);
    luaL_argcheck(L, iterations >= 1 && iterations <= CRYPTO_MAX_ITERATIONS, idx + 2, "iterations out of range");
    luaL_argcheck(L, keylen >= 1 && keylen <= CRYPTO_MAX_KEY_LENGTH, idx + 3, "key length out of range");
    luaL_argcheck(L, a->plen <= INT32_MAX && a->slen <= INT32_MAX, idx, "input too long");
    a->iterations = (int)iterations;
    a->keylen = (int)keylen;
    a->md = EVP_get_digestbyname(digest_name);
    return digest_name;
}

int ms_pbkdf2_run(const ms_pbkdf2_args *a, unsigned char *out) {
    return PKCS5_PBKDF2_HMAC(a->password, (int)a->plen, (const unsigned char *)a->salt, (int)a->slen,
                             a->iterations, a->md, a->keylen, out) == 1;
}

/* pbkdf2(password, salt, iterations, key_length, digest) -> raw key bytes, or
 * nil, err for an unknown digest or a libcrypto failure. The key lives in a
 * luaL_Buffer, so an error raised while pushing cannot leak it. */
static int crypto_pbkdf2(lua_State *L) {
    ms_pbkdf2_args a;
    const char *digest_name = ms_pbkdf2_check(L, 1, &a);
    if (a.md == NULL) {
        lua_pushnil(L);
        lua_pushfstring(L, "unknown digest '%s'", digest_name);
        return 2;
    }
    luaL_Buffer b;
    unsigned char *out = (unsigned char *)luaL_buffinitsize(L, &b, (size_t)a.keylen);
    if (!ms_pbkdf2_run(&a, out)) {
        lua_pushnil(L);
        lua_pushliteral(L, "PBKDF2 failed");
        return 2;
    }
    luaL_pushresultsize(&b, (size_t)a.keylen);
    return 1;
}

/* random_bytes(n) -> n bytes from getrandom(2) (the kernel's CSPRNG, which
 * blocks only before it is seeded at boot), or nil, err. */
static int crypto_random_bytes(lua_State *L) {
    lua_Integer n = luaL_checkinteger(L, 1);
    luaL_argcheck(L, n >= 1 && n <= CRYPTO_MAX_RANDOM, 1, "byte count out of range");
    luaL_Buffer b;
    unsigned char *out = (unsigned char *)luaL_buffinitsize(L, &b, (size_t)n);
    size_t got = 0;
    while (got < (size_t)n) {
        ssize_t r = getrandom(out + got, (size_t)n - got, 0);
        if (r < 0) {
            if (errno == EINTR) continue;
            lua_pushnil(L);
            lua_pushfstring(L, "getrandom: %s", strerror(errno));
            return 2;
        }
        got += (size_t)r;
    }
    luaL_pushresultsize(&b, (size_t)n);
    return 1;
}

/* sha256(s) -> the 32-byte digest. */
static int crypto_sha256(lua_State *L) {
    size_t len;
    const char *s = luaL_checklstring(L, 1, &len);
    unsigned char md[SHA256_DIGEST_LENGTH];
    SHA256((const unsigned char *)s, len, md);
    lua_pushlstring(L, (const char *)md, sizeof md);
    return 1;
}

/* equal(a, b) -> boolean. Strings of different lengths are unequal at once:
 * lengths are public (hashes and tokens have fixed lengths). */
static int crypto_equal(lua_State *L) {
    size_t alen, blen;
    const char *a = luaL_checklstring(L, 1, &alen);
    const char *b = luaL_checklstring(L, 2, &blen);
    lua_pushboolean(L, alen == blen && CRYPTO_memcmp(a, b, alen) == 0);
    return 1;
}

/* base64_encode(s) -> text, as Node's Buffer.toString("base64"). */
static int crypto_base64_encode(lua_State *L) {
    size_t len;
    const char *s = luaL_checklstring(L, 1, &len);
    luaL_argcheck(L, len <= (size_t)INT32_MAX / 4 * 3 - 3, 1, "input too long");
    size_t outlen = 4 * ((len + 2) / 3);
    luaL_Buffer b;
    unsigned char *out = (unsigned char *)luaL_buffinitsize(L, &b, outlen + 1);
    int n = EVP_EncodeBlock(out, (const unsigned char *)s, (int)len);
    luaL_pushresultsize(&b, (size_t)n);
    return 1;
}

static const luaL_Reg crypto_funcs[] = {
    {"pbkdf2", crypto_pbkdf2},
    {"random_bytes", crypto_random_bytes},
    {"sha256", crypto_sha256},
    {"equal", crypto_equal},
    {"base64_encode", crypto_base64_encode},
    {NULL, NULL}
};

/* Adds the functions to the module table on the top of the stack. */
void ms_crypto_open(lua_State *L) {
    luaL_setfuncs(L, crypto_funcs, 0);
}
