/* The decoder's error messages: yajl's texts (it has no error codes)
 * turned into short messages ending in "at byte N". */
#include <stdio.h>
#include <string.h>
#include "json_int.h"

static size_t json_skip_space(const char *s, size_t len, size_t i) {
    while (i < len && (s[i] == ' ' || s[i] == '\t' || s[i] == '\n' || s[i] == '\r')) i++;
    return i;
}

/* Writes a short description of byte c: 'x' ("'" for a quote), or 0xNN when
 * it is not printable ASCII. */
static void json_describe_byte(char *out, size_t size, unsigned char c) {
    if (c == '\'') snprintf(out, size, "\"'\"");
    else if (c > 0x20 && c < 0x7F) snprintf(out, size, "'%c'", c);
    else snprintf(out, size, "0x%02X", c);
}

typedef struct {
    const char *what;  /* message before " at byte N"; NULL: see use_char */
    int use_char;      /* "unexpected character X[ after the value]" */
    int after_value;
    size_t at;
} json_fault;

/* Matches yajl's own error text (yajl 2.1 has no error codes) to a short
 * message and the offset of the fault. consumed is the offset yajl stopped
 * at; a lexer error leaves it on or just past the offending byte. */
static void json_classify_yajl(json_decoder *d, const char *yerr, size_t consumed, json_fault *f) {
    const char *text = d->text;
    size_t len = d->len;
    const char *kind = strchr(yerr, ':');
    kind = kind ? kind + 2 : yerr;
    f->what = NULL;
    f->use_char = 0;
    f->after_value = 0;
    f->at = consumed;
    if (strncmp(yerr, "lexical", 7) == 0) {
        if (d->base >= len) {
            /* the lexer choked on the " " yajl_complete_parse feeds: the
             * text ended inside a token ('"\u12', '1.') */
            f->at = len;
        } else if (strncmp(kind, "invalid char in", 15) == 0) {
            f->at = consumed - 1;
            f->use_char = 1;
        } else if (strncmp(kind, "invalid string", 14) == 0 ||
                   strncmp(kind, "probable comment", 16) == 0) {
            f->use_char = 1;
        } else if (strncmp(kind, "invalid character inside", 24) == 0) {
            f->what = "unescaped control character in string";
        } else if (strncmp(kind, "inside a string", 15) == 0) {
            f->at = consumed - 1;
            f->what = "invalid escape in string";
        } else if (strncmp(kind, "invalid (non-hex)", 17) == 0) {
            size_t i = consumed;
            while (i > 0 && text[i - 1] != 'u') i--;
            f->at = i >= 2 ? i - 2 : 0;
            f->what = "invalid \\u escape in string";
        } else if (strncmp(kind, "malformed number", 16) == 0) {
            f->what = "expected a digit";
        } else if (strncmp(kind, "invalid bytes in UTF8", 21) == 0) {
            f->what = "invalid UTF-8 in string";
        } else {
            f->what = "invalid JSON";
        }
    } else {
        /* Parse errors: the offending token starts at the first non-space
         * after the last token a callback saw, past a ',' or ':' that was
         * fine (yajl has no callback for those). */
        size_t start = json_skip_space(text, len, d->last_end);
        if (strncmp(kind, "premature EOF", 13) == 0) {
            start = len;
        } else if (strncmp(kind, "unallowed token", 15) == 0) {
            start = consumed - 1;
            f->use_char = 1;
        } else if (strncmp(kind, "invalid object key", 18) == 0) {
            if (start < len && (text[start] == ',' || text[start] == ':') && start + 1 < consumed)
                start = json_skip_space(text, len, start + 1);
            f->what = "expected a string key";
        } else if (strncmp(kind, "object key and value", 20) == 0) {
            f->what = "expected ':'";
        } else if (strncmp(kind, "after key and value", 19) == 0) {
            f->what = "expected ',' or '}'";
        } else if (strncmp(kind, "after array element", 19) == 0) {
            f->what = "expected ',' or ']'";
        } else if (strncmp(kind, "trailing garbage", 16) == 0) {
            f->use_char = 1;
            f->after_value = 1;
        } else {
            f->what = "invalid JSON";
        }
        f->at = start;
    }
}

/* Pushes the message for a failed parse of the chunk at d->base. */
void json_push_decode_error(json_decoder *d, yajl_status status) {
    lua_State *L = d->L;
    json_fault f = {NULL, 0, 0, 0};
    if (status == yajl_status_client_canceled && d->err == JSON_DERR_DEPTH) {
        lua_pushfstring(L, "nesting deeper than %I at byte %I",
                        (lua_Integer)d->max_depth, (lua_Integer)d->err_at);
        return;
    } else if (status == yajl_status_client_canceled && d->err != JSON_DERR_NONE) {
        f.at = d->err_at;
        f.what = d->err == JSON_DERR_RANGE ? "number out of range"
               : "nesting too deep for the Lua stack";
    } else {
        size_t consumed = d->base + yajl_get_bytes_consumed(d->handle);
        unsigned char *yerr = yajl_get_error(d->handle, 0, NULL, 0);
        if (yerr == NULL) {
            f.what = "invalid JSON";
            f.at = consumed;
        } else {
            json_classify_yajl(d, (const char *)yerr, consumed, &f);
            yajl_free_error(d->handle, yerr);
        }
    }
    if (f.at >= d->len) {
        lua_pushfstring(L, "unexpected end of input at byte %I", (lua_Integer)d->len);
    } else if (f.use_char) {
        char desc[16];
        json_describe_byte(desc, sizeof desc, (unsigned char)d->text[f.at]);
        lua_pushfstring(L, "unexpected character %s%s at byte %I", desc,
                        f.after_value ? " after the value" : "", (lua_Integer)f.at);
    } else {
        lua_pushfstring(L, "%s at byte %I", f.what, (lua_Integer)f.at);
    }
}

/* Message for a byte the pre-scan rejected and yajl did not. */
void json_push_suspect_error(lua_State *L, int kind, size_t at, unsigned char c) {
    char desc[16];
    switch (kind) {
    case JSON_SUSPECT_UTF8:
        lua_pushfstring(L, "invalid UTF-8 in string at byte %I", (lua_Integer)at);
        break;
    case JSON_SUSPECT_SURROGATE:
        lua_pushfstring(L, "unpaired UTF-16 surrogate in \\u escape at byte %I", (lua_Integer)at);
        break;
    default:
        json_describe_byte(desc, sizeof desc, c);
        lua_pushfstring(L, "unexpected character %s at byte %I", desc, (lua_Integer)at);
        break;
    }
}

/* yajl 2.1 takes an unterminated string after the value ('1"') for the end
 * of input: only white space may follow the value, which ended with the
 * last callback. Pushes nil and the message if something else comes before
 * offset limit, and returns 1; else pushes nothing and returns 0. */
int json_push_trailing_error(json_decoder *d, size_t limit) {
    size_t rest = json_skip_space(d->text, limit, d->last_end);
    if (rest >= limit) return 0;
    char desc[16];
    json_describe_byte(desc, sizeof desc, (unsigned char)d->text[rest]);
    lua_pushnil(d->L);
    lua_pushfstring(d->L, "unexpected character %s after the value at byte %I",
                    desc, (lua_Integer)rest);
    return 1;
}

