/* Number text: JSON integers within int64 and doubles read with the
 * locale's radix character (lua-cjson's fpconv plays this part). */
#include <limits.h>
#include <locale.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "json_int.h"

/* JSON integer syntax (no '.', 'e', 'E') within int64: 1 and *out set;
 * integer syntax beyond int64: -1; any other number: 0. */
int json_parse_integer(const char *s, size_t len, long long *out) {
    size_t i = (s[0] == '-');
    size_t digits = 0;
    uint64_t u = 0;
    for (; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c < '0' || c > '9') return 0;
        /* 19 digits cannot overflow u; more are out of range anyway */
        if (digits++ < 19) u = u * 10 + (c - '0');
    }
    uint64_t limit = (uint64_t)INT64_MAX + (s[0] == '-');
    if (digits > 19 || u > limit) return -1;
    if (s[0] != '-') *out = (long long)u;
    else if (u == (uint64_t)INT64_MAX + 1) *out = LLONG_MIN;
    else *out = -(long long)u;
    return 1;
}

int ms_json_integer(const char *s, size_t len, long long *out) {
    return len > 0 && json_parse_integer(s, len, out) == 1;
}

/* strtod of a number yajl validated, with the locale's radix character.
 * Returns 1, 0 if it is infinite (out of range), -1 if out of memory. */
int json_to_double(const char *s, size_t len, char *decpoint, double *out) {
    char small[64];
    char *copy = small;
    if (len >= sizeof small && (copy = malloc(len + 1)) == NULL) return -1;
    memcpy(copy, s, len);
    copy[len] = '\0';
    if (*decpoint == 0) *decpoint = lua_getlocaledecpoint();
    if (*decpoint != '.') {
        char *dot = memchr(copy, '.', len);
        if (dot) *dot = *decpoint;
    }
    *out = strtod(copy, NULL);
    if (copy != small) free(copy);
    return !isinf(*out);
}

