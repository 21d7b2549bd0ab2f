/* The strictness pre-scan of JSON text: finds the bytes yajl 2.1 accepts
 * although strict JSON (RFC 8259) refuses them, eight bytes at a time on the
 * common ASCII path. */
#include <stddef.h>
#include <stdint.h>
#include "json_int.h"

static int json_hex_value(unsigned char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* Reads the 4 hex digits at s[0..3] (bounds checked by the caller); -1 if
 * one is not hex (yajl reports that itself). */
static long json_hex4(const unsigned char *s) {
    long v = 0;
    for (int i = 0; i < 4; i++) {
        int d = json_hex_value(s[i]);
        if (d < 0) return -1;
        v = v * 16 + d;
    }
    return v;
}

/* Length of the valid UTF-8 sequence at s[0..n), 0 if it is not one
 * (RFC 3629: no overlongs, no surrogates, nothing above U+10FFFF); n when
 * the text ends inside a sequence that was valid so far (then yajl reports
 * the end of input). */
static size_t json_utf8_len(const unsigned char *s, size_t n) {
    unsigned char c = s[0];
    unsigned char lo = 0x80, hi = 0xBF;
    size_t need;
    if (c >= 0xC2 && c <= 0xDF) need = 1;
    else if (c >= 0xE0 && c <= 0xEF) {
        need = 2;
        if (c == 0xE0) lo = 0xA0;
        else if (c == 0xED) hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        need = 3;
        if (c == 0xF0) lo = 0x90;
        else if (c == 0xF4) hi = 0x8F;
    } else return 0;
    if (n > 1 && (s[1] < lo || s[1] > hi)) return 0;
    for (size_t i = 2; i <= need && i < n; i++)
        if ((s[i] & 0xC0) != 0x80) return 0;
    return n <= need ? n : need + 1;
}

/* 1 if s[0..n) (n < 6) could begin a low surrogate escape "\uDC00".."\uDFFF". */
static int json_is_low_prefix(const unsigned char *s, size_t n) {
    for (size_t k = 0; k < n; k++) {
        unsigned char c = s[k];
        int ok = k == 0 ? c == '\\'
               : k == 1 ? c == 'u'
               : k == 2 ? (c == 'd' || c == 'D')
               : k == 3 ? json_hex_value(c) >= 0xC
               : json_hex_value(c) >= 0;
        if (!ok) return 0;
    }
    return 1;
}

/* Handles the backslash run starting at s[i]: returns the offset to resume
 * the scan from, or sets *bad to the offset of an escape that starts or ends
 * an unpaired UTF-16 surrogate. Outside strings any backslash is an error
 * yajl reports first, so only escapes inside strings matter here. */
static size_t json_scan_escapes(const unsigned char *s, size_t len, size_t i, size_t *bad) {
    size_t j = i;
    while (j < len && s[j] == '\\') j++;
    if ((j - i) % 2 == 0 || j + 5 > len || s[j] != 'u') return j;
    long cp = json_hex4(s + j + 1);
    if (cp < 0xD800 || cp > 0xDFFF) return j;
    if (cp <= 0xDBFF && j + 11 <= len && s[j + 5] == '\\' && s[j + 6] == 'u') {
        long low = json_hex4(s + j + 7);
        if (low >= 0xDC00 && low <= 0xDFFF) return j + 11;
    }
    if (cp <= 0xDBFF && j + 11 > len && json_is_low_prefix(s + j + 5, len - (j + 5)))
        return len;  /* the text ends inside the pair: yajl says so */
    *bad = j - 1;
    return len;
}

/* Finds the first byte of text that strict JSON rejects but yajl accepts.
 * Returns its JSON_SUSPECT_* kind and stores its offset in *at. */
int json_prescan(const unsigned char *s, size_t len, size_t *at) {
    size_t i = 0;
    while (i < len) {
        /* skip 8 plain bytes at a time: no high bit, '\\', \v or \f */
        while (i + 8 <= len) {
            uint64_t w = json_load8(s + i);
            if ((w & JSON_HIGHS) || json_has_byte(w, '\\') ||
                json_has_byte(w, 0x0B) || json_has_byte(w, 0x0C))
                break;
            i += 8;
        }
        if (i >= len) break;
        unsigned char c = s[i];
        if (c < 0x80) {
            if (c == 0x0B || c == 0x0C) {
                *at = i;
                return JSON_SUSPECT_CONTROL;
            }
            if (c == '\\') {
                size_t bad = len;
                i = json_scan_escapes(s, len, i, &bad);
                if (bad < len) {
                    *at = bad;
                    return JSON_SUSPECT_SURROGATE;
                }
            } else {
                i++;
            }
        } else {
            size_t n = json_utf8_len(s + i, len - i);
            if (n == 0) {
                *at = i;
                return JSON_SUSPECT_UTF8;
            }
            i += n;
        }
    }
    return JSON_SUSPECT_NONE;
}


int ms_json_strict(const char *text, size_t len) {
    size_t at;
    return json_prescan((const unsigned char *)text, len, &at) == JSON_SUSPECT_NONE;
}

