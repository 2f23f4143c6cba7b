/* A small JSON reader for hook configurations (RFC 8259: objects, arrays,
 * strings with every escape, numbers, true/false/null; nesting capped at 64
 * levels). `fm_json_parse` builds a tree the caller frees with
 * `fm_json_free`; the SDK parses the configuration and hands the plugin the
 * root. Typed getters with the SDK's errors are in flexmodel_hook.h.
 */
#ifndef FLEXMODEL_JSON_H
#define FLEXMODEL_JSON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef enum {
    FM_JSON_NULL = 0,
    FM_JSON_BOOL,
    FM_JSON_NUMBER,
    FM_JSON_STRING,
    FM_JSON_ARRAY,
    FM_JSON_OBJECT,
} fm_json_type;

typedef struct fm_json fm_json;
struct fm_json {
    fm_json_type type;
    bool boolean;
    /* A number: its value; `integer` when written without fraction or
     * exponent and within int64 (then `int_value` holds it exactly). */
    double number;
    bool integer;
    int64_t int_value;
    /* A string (NUL-terminated, UTF-8; `len` bytes, may hold NULs). */
    char *string;
    size_t string_len;
    /* An array's items, or an object's members (each with `key`). */
    fm_json *items;
    size_t len;
    char *key;
};

/* The tree of `text`, or NULL with a one-line reason in `err`. */
fm_json *fm_json_parse(const char *text, size_t len, char *err, size_t err_cap);
void fm_json_free(fm_json *j);
/* An object's member `key` (the last of duplicates), or NULL. */
const fm_json *fm_json_get(const fm_json *obj, const char *key);
/* "a number", "a string", ... for messages. */
const char *fm_json_type_name(fm_json_type t);

#endif
