/* Typed configuration getters of flexmodel_hook.h: the checks the Rust SDK
 * gets from serde (`deny_unknown_fields`, field types, defaults), each
 * failure an FM_INVALID_CONFIG naming the field. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "flexmodel_hook.h"

static fm_status wrong(const char *key, const char *want, const fm_json *got) {
    return fm_error(FM_INVALID_CONFIG, "`%s`: expected %s, got %s", key, want, fm_json_type_name(got->type));
}

fm_status fm_config_fields(const fm_json *config, const char *const *allowed, size_t n) {
    if (config->type != FM_JSON_OBJECT)
        return fm_error(FM_INVALID_CONFIG, "configuration: expected an object, got %s",
                        fm_json_type_name(config->type));
    for (size_t i = 0; i < config->len; i++) {
        const char *k = config->items[i].key;
        bool known = false;
        for (size_t a = 0; a < n; a++) known |= strcmp(k, allowed[a]) == 0;
        if (!known) return fm_error(FM_INVALID_CONFIG, "unknown field `%s`", k);
        for (size_t j = 0; j < i; j++)
            if (strcmp(k, config->items[j].key) == 0) return fm_error(FM_INVALID_CONFIG, "duplicate field `%s`", k);
    }
    return FM_OK;
}

fm_status fm_config_f32(const fm_json *config, const char *key, bool required, float dflt, float *out) {
    const fm_json *v = fm_json_get(config, key);
    if (!v) {
        if (required) return fm_error(FM_INVALID_CONFIG, "missing field `%s`", key);
        *out = dflt;
        return FM_OK;
    }
    if (v->type != FM_JSON_NUMBER) return wrong(key, "a number", v);
    *out = (float)v->number;
    return FM_OK;
}

fm_status fm_config_bool(const fm_json *config, const char *key, bool dflt, bool *out) {
    const fm_json *v = fm_json_get(config, key);
    if (!v) {
        *out = dflt;
        return FM_OK;
    }
    if (v->type != FM_JSON_BOOL) return wrong(key, "a boolean", v);
    *out = v->boolean;
    return FM_OK;
}

fm_status fm_config_string(const fm_json *config, const char *key, const char *dflt, const char **out) {
    const fm_json *v = fm_json_get(config, key);
    if (!v) {
        *out = dflt;
        return FM_OK;
    }
    if (v->type != FM_JSON_STRING) return wrong(key, "a string", v);
    *out = v->string;
    return FM_OK;
}

fm_status fm_config_f32_list(const fm_json *config, const char *key, bool required, float **out, size_t *n) {
    *out = NULL;
    *n = 0;
    const fm_json *v = fm_json_get(config, key);
    if (!v) return required ? fm_error(FM_INVALID_CONFIG, "missing field `%s`", key) : FM_OK;
    if (v->type != FM_JSON_ARRAY) return wrong(key, "a list of numbers", v);
    float *xs = malloc((v->len ? v->len : 1) * sizeof(float));
    if (!xs) return fm_error(FM_FAILED, "out of memory");
    for (size_t i = 0; i < v->len; i++) {
        if (v->items[i].type != FM_JSON_NUMBER) {
            free(xs);
            return wrong(key, "a list of numbers", v->items + i);
        }
        xs[i] = (float)v->items[i].number;
    }
    *out = xs;
    *n = v->len;
    return FM_OK;
}

fm_status fm_config_i64_list(const fm_json *config, const char *key, int64_t **out, size_t *n) {
    *out = NULL;
    *n = 0;
    const fm_json *v = fm_json_get(config, key);
    if (!v) return FM_OK;
    if (v->type != FM_JSON_ARRAY) return wrong(key, "a list of integers", v);
    int64_t *xs = malloc((v->len ? v->len : 1) * sizeof(int64_t));
    if (!xs) return fm_error(FM_FAILED, "out of memory");
    for (size_t i = 0; i < v->len; i++) {
        if (v->items[i].type != FM_JSON_NUMBER || !v->items[i].integer) {
            free(xs);
            return fm_error(FM_INVALID_CONFIG, "`%s`: expected a list of integers", key);
        }
        xs[i] = v->items[i].int_value;
    }
    *out = xs;
    *n = v->len;
    return FM_OK;
}
