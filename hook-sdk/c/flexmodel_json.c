/* The JSON reader of flexmodel_json.h. */
#include "flexmodel_json.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    const char *s;
    size_t len, at;
    char *err;
    size_t err_cap;
    int depth;
} parser;

static bool fail(parser *p, const char *why) {
    if (p->err && p->err_cap) snprintf(p->err, p->err_cap, "%s at byte %zu", why, p->at);
    return false;
}

static void skip_ws(parser *p) {
    while (p->at < p->len) {
        char c = p->s[p->at];
        if (c != ' ' && c != '\t' && c != '\n' && c != '\r') break;
        p->at++;
    }
}

static bool literal(parser *p, const char *word) {
    size_t n = strlen(word);
    if (p->len - p->at < n || memcmp(p->s + p->at, word, n) != 0) return fail(p, "invalid literal");
    p->at += n;
    return true;
}

static bool push_utf8(char **buf, size_t *len, size_t *cap, uint32_t cp) {
    char tmp[4];
    size_t n;
    if (cp < 0x80) { tmp[0] = (char)cp; n = 1; }
    else if (cp < 0x800) { tmp[0] = (char)(0xC0 | (cp >> 6)); tmp[1] = (char)(0x80 | (cp & 0x3F)); n = 2; }
    else if (cp < 0x10000) {
        tmp[0] = (char)(0xE0 | (cp >> 12)); tmp[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        tmp[2] = (char)(0x80 | (cp & 0x3F)); n = 3;
    } else {
        tmp[0] = (char)(0xF0 | (cp >> 18)); tmp[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
        tmp[2] = (char)(0x80 | ((cp >> 6) & 0x3F)); tmp[3] = (char)(0x80 | (cp & 0x3F)); n = 4;
    }
    if (*len + n + 1 > *cap) {
        size_t c = (*cap ? *cap * 2 : 16) + n;
        char *b = realloc(*buf, c);
        if (!b) return false;
        *buf = b;
        *cap = c;
    }
    memcpy(*buf + *len, tmp, n);
    *len += n;
    return true;
}

static bool hex4(parser *p, uint32_t *out) {
    if (p->len - p->at < 4) return fail(p, "short \\u escape");
    uint32_t v = 0;
    for (int i = 0; i < 4; i++) {
        char c = p->s[p->at++];
        v <<= 4;
        if (c >= '0' && c <= '9') v |= (uint32_t)(c - '0');
        else if (c >= 'a' && c <= 'f') v |= (uint32_t)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F') v |= (uint32_t)(c - 'A' + 10);
        else return fail(p, "bad \\u escape");
    }
    *out = v;
    return true;
}

static bool string(parser *p, char **out, size_t *out_len) {
    p->at++; /* the opening quote */
    char *buf = NULL;
    size_t len = 0, cap = 0;
    while (true) {
        if (p->at >= p->len) { free(buf); return fail(p, "unterminated string"); }
        unsigned char c = (unsigned char)p->s[p->at++];
        uint32_t cp = c;
        if (c == '"') break;
        if (c < 0x20) { free(buf); return fail(p, "control character in string"); }
        if (c == '\\') {
            if (p->at >= p->len) { free(buf); return fail(p, "unterminated string"); }
            char e = p->s[p->at++];
            switch (e) {
            case '"': cp = '"'; break;
            case '\\': cp = '\\'; break;
            case '/': cp = '/'; break;
            case 'b': cp = '\b'; break;
            case 'f': cp = '\f'; break;
            case 'n': cp = '\n'; break;
            case 'r': cp = '\r'; break;
            case 't': cp = '\t'; break;
            case 'u': {
                if (!hex4(p, &cp)) { free(buf); return false; }
                if (cp >= 0xD800 && cp < 0xDC00) {
                    uint32_t lo;
                    if (p->len - p->at < 2 || p->s[p->at] != '\\' || p->s[p->at + 1] != 'u') {
                        free(buf);
                        return fail(p, "lone surrogate");
                    }
                    p->at += 2;
                    if (!hex4(p, &lo)) { free(buf); return false; }
                    if (lo < 0xDC00 || lo >= 0xE000) { free(buf); return fail(p, "lone surrogate"); }
                    cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                } else if (cp >= 0xDC00 && cp < 0xE000) {
                    free(buf);
                    return fail(p, "lone surrogate");
                }
                break;
            }
            default: free(buf); return fail(p, "bad escape");
            }
            if (!push_utf8(&buf, &len, &cap, cp)) { free(buf); return fail(p, "out of memory"); }
            continue;
        }
        /* Raw bytes (UTF-8 passes through). */
        if (len + 2 > cap) {
            size_t nc = cap ? cap * 2 : 16;
            char *b = realloc(buf, nc);
            if (!b) { free(buf); return fail(p, "out of memory"); }
            buf = b;
            cap = nc;
        }
        buf[len++] = (char)c;
    }
    if (!buf) buf = malloc(1);
    if (!buf) return fail(p, "out of memory");
    buf[len] = 0;
    *out = buf;
    *out_len = len;
    return true;
}

static bool number(parser *p, fm_json *j) {
    size_t start = p->at;
    bool integer = true;
    if (p->s[p->at] == '-') p->at++;
    if (p->at >= p->len) return fail(p, "bad number");
    if (p->s[p->at] == '0') p->at++;
    else if (p->s[p->at] >= '1' && p->s[p->at] <= '9')
        while (p->at < p->len && p->s[p->at] >= '0' && p->s[p->at] <= '9') p->at++;
    else return fail(p, "bad number");
    if (p->at < p->len && p->s[p->at] == '.') {
        integer = false;
        p->at++;
        if (p->at >= p->len || p->s[p->at] < '0' || p->s[p->at] > '9') return fail(p, "bad number");
        while (p->at < p->len && p->s[p->at] >= '0' && p->s[p->at] <= '9') p->at++;
    }
    if (p->at < p->len && (p->s[p->at] == 'e' || p->s[p->at] == 'E')) {
        integer = false;
        p->at++;
        if (p->at < p->len && (p->s[p->at] == '+' || p->s[p->at] == '-')) p->at++;
        if (p->at >= p->len || p->s[p->at] < '0' || p->s[p->at] > '9') return fail(p, "bad number");
        while (p->at < p->len && p->s[p->at] >= '0' && p->s[p->at] <= '9') p->at++;
    }
    size_t n = p->at - start;
    char tmp[64];
    char *text = n < sizeof tmp ? tmp : malloc(n + 1);
    if (!text) return fail(p, "out of memory");
    memcpy(text, p->s + start, n);
    text[n] = 0;
    j->type = FM_JSON_NUMBER;
    j->number = strtod(text, NULL);
    if (integer) {
        errno = 0;
        long long v = strtoll(text, NULL, 10);
        /* Out of int64's range: a number, not an integer (as serde_json). */
        j->integer = errno != ERANGE;
        j->int_value = v;
    }
    if (text != tmp) free(text);
    return true;
}

static bool value(parser *p, fm_json *j);

static bool grow(fm_json **items, size_t len, size_t *cap) {
    if (len < *cap) return true;
    size_t c = *cap ? *cap * 2 : 4;
    fm_json *n = realloc(*items, c * sizeof(fm_json));
    if (!n) return false;
    *items = n;
    *cap = c;
    return true;
}

static bool compound(parser *p, fm_json *j, bool object) {
    if (++p->depth > 64) return fail(p, "nested too deeply");
    p->at++;
    j->type = object ? FM_JSON_OBJECT : FM_JSON_ARRAY;
    size_t cap = 0;
    char close = object ? '}' : ']';
    skip_ws(p);
    if (p->at < p->len && p->s[p->at] == close) {
        p->at++;
        p->depth--;
        return true;
    }
    while (true) {
        if (!grow(&j->items, j->len, &cap)) return fail(p, "out of memory");
        fm_json *item = &j->items[j->len];
        memset(item, 0, sizeof *item);
        skip_ws(p);
        if (object) {
            size_t klen;
            if (p->at >= p->len || p->s[p->at] != '"') return fail(p, "expected a key");
            if (!string(p, &item->key, &klen)) return false;
            j->len++;
            skip_ws(p);
            if (p->at >= p->len || p->s[p->at] != ':') return fail(p, "expected ':'");
            p->at++;
        } else {
            j->len++;
        }
        if (!value(p, item)) return false;
        skip_ws(p);
        if (p->at < p->len && p->s[p->at] == ',') { p->at++; continue; }
        if (p->at < p->len && p->s[p->at] == close) { p->at++; break; }
        return fail(p, object ? "expected ',' or '}'" : "expected ',' or ']'");
    }
    p->depth--;
    return true;
}

static bool value(parser *p, fm_json *j) {
    skip_ws(p);
    if (p->at >= p->len) return fail(p, "unexpected end");
    switch (p->s[p->at]) {
    case '{': return compound(p, j, true);
    case '[': return compound(p, j, false);
    case '"': j->type = FM_JSON_STRING; return string(p, &j->string, &j->string_len);
    case 't': j->type = FM_JSON_BOOL; j->boolean = true; return literal(p, "true");
    case 'f': j->type = FM_JSON_BOOL; j->boolean = false; return literal(p, "false");
    case 'n': j->type = FM_JSON_NULL; return literal(p, "null");
    default: return number(p, j);
    }
}

static void release(fm_json *j) {
    for (size_t i = 0; i < j->len; i++) release(&j->items[i]);
    free(j->items);
    free(j->string);
    free(j->key);
}

fm_json *fm_json_parse(const char *text, size_t len, char *err, size_t err_cap) {
    parser p = {text, len, 0, err, err_cap, 0};
    fm_json *root = calloc(1, sizeof *root);
    if (!root) return NULL;
    bool ok = value(&p, root);
    if (ok) {
        skip_ws(&p);
        if (p.at != p.len) ok = fail(&p, "trailing characters");
    }
    if (!ok) {
        fm_json_free(root);
        return NULL;
    }
    return root;
}

void fm_json_free(fm_json *j) {
    if (!j) return;
    release(j);
    free(j);
}

const fm_json *fm_json_get(const fm_json *obj, const char *key) {
    if (!obj || obj->type != FM_JSON_OBJECT) return NULL;
    const fm_json *found = NULL;
    for (size_t i = 0; i < obj->len; i++)
        if (strcmp(obj->items[i].key, key) == 0) found = &obj->items[i];
    return found;
}

const char *fm_json_type_name(fm_json_type t) {
    switch (t) {
    case FM_JSON_NULL: return "null";
    case FM_JSON_BOOL: return "a boolean";
    case FM_JSON_NUMBER: return "a number";
    case FM_JSON_STRING: return "a string";
    case FM_JSON_ARRAY: return "an array";
    case FM_JSON_OBJECT: return "an object";
    }
    return "?";
}
