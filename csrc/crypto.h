/* PBKDF2 as crypto.c and the worker pool (workers.c) both run it: one
 * argument check and one computation, so core.pbkdf2 and pool:pbkdf2 agree on
 * bounds, digests and results. */
#ifndef MOONSTREAM_CRYPTO_H
#define MOONSTREAM_CRYPTO_H

#include <stddef.h>
#include <lua.h>
#include <openssl/evp.h>

typedef struct ms_pbkdf2_args {
    const char *password, *salt;   /* point into Lua strings until copied */
    size_t plen, slen;
    int iterations, keylen;
    const EVP_MD *md;              /* NULL: unknown digest */
} ms_pbkdf2_args;

/* Reads (password, salt, iterations, key_length, digest) from the stack at
 * idx..idx+4 into a; raises on misuse (out-of-range numbers). An unknown
 * digest leaves a->md NULL and returns its name for the caller's error. */
const char *ms_pbkdf2_check(lua_State *L, int idx, ms_pbkdf2_args *a);

/* Writes a->keylen bytes of key to out; 1 on success, 0 on a libcrypto
 * failure. Touches no Lua state: safe on any thread. */
int ms_pbkdf2_run(const ms_pbkdf2_args *a, unsigned char *out);

#endif
