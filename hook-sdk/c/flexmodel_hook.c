/* The C SDK of flexmodel_hook.h over the generated bindings (hook_plugin.h):
 * the world's exports, dispatched to the plugin's fm_hook_* functions, and
 * the host interfaces as plain C calls. Ownership follows the canonical ABI
 * as wit-bindgen's C generator lays it out: what an export receives it
 * frees, what it returns is malloc'd (the generated post-return frees it),
 * what an import returns is the guest's to free. */
#include "flexmodel_hook.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hook_plugin.h"

/* ---------------------------------------------------------------- errors */

static fm_status last_kind = FM_OK;
static char *last_msg = NULL;
static size_t last_len = 0;

static void set_error(fm_status kind, char *msg, size_t len) {
    free(last_msg);
    last_kind = kind;
    last_msg = msg;
    last_len = len;
}

fm_status fm_error(fm_status kind, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    char *msg = malloc(n > 0 ? (size_t)n + 1 : 1);
    if (msg) {
        va_start(ap, fmt);
        vsnprintf(msg, (size_t)n + 1, fmt, ap);
        va_end(ap);
    }
    set_error(kind, msg, msg ? (size_t)n : 0);
    return kind;
}

/* A host error becomes the pending error (its message taken over). */
static fm_status from_host(flexmodel_hook_types_hook_error_t *e) {
    fm_status kind = (fm_status)(e->tag + 1);
    hook_plugin_string_t *m = &e->val.invalid_config; /* every case is a string */
    char *msg = malloc(m->len + 1);
    if (msg) {
        memcpy(msg, m->ptr, m->len);
        msg[m->len] = 0;
    }
    set_error(kind, msg, msg ? m->len : 0);
    flexmodel_hook_types_hook_error_free(e);
    return kind;
}

/* The pending error as the export's `hook-error` (ownership handed over). */
static void to_host(fm_status kind, flexmodel_hook_types_hook_error_t *err) {
    if (last_kind != kind || !last_msg) {
        fm_error(kind, "failed without a message");
    }
    err->tag = (uint8_t)(kind - 1);
    err->val.invalid_config.ptr = (uint8_t *)last_msg;
    err->val.invalid_config.len = last_len;
    last_msg = NULL;
    last_len = 0;
    last_kind = FM_OK;
}

size_t fm_dtype_size(fm_dtype d) { return d == FM_F32 ? 4 : 2; }

/* ---------------------------------------------------------------- slices */

fm_slice fm_slice_all(void) {
    fm_slice s;
    memset(&s, 0, sizeof s);
    return s;
}

fm_slice fm_slice_token(int64_t pos) {
    fm_slice s = fm_slice_all();
    s.ndims = 2;
    s.dims[0] = (fm_dim){0, false, 0, 1};
    s.dims[1] = (fm_dim){pos, pos != -1, pos + 1, 1};
    return s;
}

fm_slice fm_slice_last_token(void) { return fm_slice_token(-1); }

fm_status fm_slice_from_json(const fm_json *spec, fm_slice *out) {
    *out = fm_slice_all();
    if (!spec) return FM_OK;
    if (spec->type != FM_JSON_ARRAY)
        return fm_error(FM_INVALID_CONFIG, "slice: expected a list, got %s", fm_json_type_name(spec->type));
    if (spec->len > FM_MAX_DIMS)
        return fm_error(FM_INVALID_CONFIG, "slice: more than %d dimensions", FM_MAX_DIMS);
    for (size_t i = 0; i < spec->len; i++) {
        const fm_json *d = &spec->items[i];
        fm_dim *o = &out->dims[i];
        if (d->type == FM_JSON_NULL) {
            *o = (fm_dim){0, false, 0, 1};
        } else if (d->type == FM_JSON_NUMBER && d->integer) {
            *o = (fm_dim){d->int_value, d->int_value != -1, d->int_value + 1, 1};
        } else if (d->type == FM_JSON_ARRAY && (d->len == 2 || d->len == 3)) {
            int64_t v[3] = {0, 0, 1};
            bool some[3] = {false, false, false};
            for (size_t k = 0; k < d->len; k++) {
                const fm_json *x = &d->items[k];
                if (x->type == FM_JSON_NULL) continue;
                if (x->type != FM_JSON_NUMBER || !x->integer)
                    return fm_error(FM_INVALID_CONFIG, "slice entry %zu: bounds must be integers or null", i);
                v[k] = x->int_value;
                some[k] = true;
            }
            int64_t step = some[2] ? v[2] : 1;
            if (step < 1) return fm_error(FM_INVALID_CONFIG, "slice step %lld must be >= 1", (long long)step);
            *o = (fm_dim){some[0] ? v[0] : 0, some[1], v[1], (uint64_t)step};
        } else {
            return fm_error(FM_INVALID_CONFIG,
                            "slice entry %zu must be null, an integer, [start, stop] or [start, stop, step]", i);
        }
    }
    out->ndims = spec->len;
    return FM_OK;
}

/* A slice in the bindings' layout, pointing into `buf`. */
static flexmodel_hook_types_slice_t lower(const fm_slice *s, flexmodel_hook_types_dim_range_t *buf) {
    size_t n = s ? s->ndims : 0;
    for (size_t i = 0; i < n; i++) {
        buf[i].start = s->dims[i].start;
        buf[i].stop.is_some = s->dims[i].has_stop;
        buf[i].stop.val = s->dims[i].stop;
        buf[i].step = s->dims[i].step;
    }
    return (flexmodel_hook_types_slice_t){buf, n};
}

static hook_plugin_string_t str(const char *s) {
    return (hook_plugin_string_t){(uint8_t *)s, s ? strlen(s) : 0};
}

static char *dup_n(const char *s, size_t n) {
    char *d = malloc(n + 1);
    if (d) {
        memcpy(d, s, n);
        d[n] = 0;
    }
    return d;
}

/* -------------------------------------------------------------- exports */

void exports_flexmodel_hook_plugin_metadata(exports_flexmodel_hook_plugin_plugin_info_t *ret) {
    fm_info info;
    memset(&info, 0, sizeof info);
    fm_hook_info(&info);
    const char *fields[3] = {info.name, info.version, info.description};
    hook_plugin_string_t *outs[3] = {&ret->name, &ret->version, &ret->description};
    for (int i = 0; i < 3; i++) {
        size_t n = fields[i] ? strlen(fields[i]) : 0;
        outs[i]->ptr = (uint8_t *)dup_n(fields[i] ? fields[i] : "", n);
        outs[i]->len = n;
    }
    ret->hook_points.len = 0;
    ret->hook_points.ptr = NULL;
    if (info.n_hook_points) {
        ret->hook_points.ptr = malloc(info.n_hook_points * sizeof(hook_plugin_string_t));
        for (size_t i = 0; ret->hook_points.ptr && i < info.n_hook_points; i++) {
            size_t n = strlen(info.hook_points[i]);
            ret->hook_points.ptr[i] = (hook_plugin_string_t){(uint8_t *)dup_n(info.hook_points[i], n), n};
            ret->hook_points.len++;
        }
    }
    ret->edits = info.edits;
}

bool exports_flexmodel_hook_plugin_init(hook_plugin_string_t *config, exports_flexmodel_hook_plugin_access_t *ret,
                                        exports_flexmodel_hook_plugin_hook_error_t *err) {
    const char *text = (const char *)config->ptr;
    size_t len = config->len;
    bool blank = true;
    for (size_t i = 0; i < len; i++)
        if (text[i] != ' ' && text[i] != '\t' && text[i] != '\n' && text[i] != '\r') blank = false;
    char why[160];
    fm_json *root = blank ? fm_json_parse("{}", 2, why, sizeof why) : fm_json_parse(text, len, why, sizeof why);
    hook_plugin_string_free(config);
    fm_status st;
    fm_access access;
    memset(&access, 0, sizeof access);
    if (!root) {
        st = fm_error(FM_INVALID_CONFIG, "configuration is not JSON: %s", why);
    } else {
        st = fm_hook_init(root, &access);
        fm_json_free(root);
    }
    if (st != FM_OK) {
        to_host(st, err);
        return false;
    }
    ret->mode = (flexmodel_hook_types_edit_mode_t)access.mode;
    ret->reads.is_some = access.has_reads;
    ret->reads.val.ptr = NULL;
    ret->reads.val.len = 0;
    if (access.has_reads && access.reads.ndims) {
        flexmodel_hook_types_dim_range_t *dims = malloc(access.reads.ndims * sizeof *dims);
        if (!dims) {
            to_host(fm_error(FM_FAILED, "out of memory"), err);
            return false;
        }
        ret->reads.val = lower(&access.reads, dims);
    }
    return true;
}

bool exports_flexmodel_hook_plugin_on_forward(exports_flexmodel_hook_plugin_call_context_t *ctx,
                                              exports_flexmodel_hook_plugin_borrow_activation_t act,
                                              exports_flexmodel_hook_plugin_hook_error_t *err) {
    fm_context c;
    memset(&c, 0, sizeof c);
    char *point = dup_n((const char *)ctx->hook_point.ptr, ctx->hook_point.len);
    c.hook_point = point ? point : "";
    c.shape = ctx->shape.ptr;
    c.rank = ctx->shape.len;
    c.dtype = (fm_dtype)ctx->dtype;
    c.tp_rank = ctx->rank.tp_rank;
    c.tp_size = ctx->rank.tp_size;
    c.pp_rank = ctx->rank.pp_rank;
    c.pp_size = ctx->rank.pp_size;
    c.dp_rank = ctx->rank.dp_rank;
    c.dp_size = ctx->rank.dp_size;
    c.global_rank = ctx->rank.global_rank;
    c.world_size = ctx->rank.world_size;
    c.forward_index = ctx->forward_index;
    flexmodel_hook_generation_gen_step_t step;
    if (flexmodel_hook_generation_current(&step)) {
        c.generating = true;
        c.gen_step = step.step;
        c.gen_position = step.position;
    }
    c.backward = flexmodel_hook_pass_current_direction() == FLEXMODEL_HOOK_PASS_DIRECTION_BACKWARD;
    c.has_token_dim = flexmodel_hook_tokens_token_dim(&c.token_dim);
    /* Set only when the host returns some. */
    flexmodel_hook_tokens_list_span_t spans = {NULL, 0};
    if (flexmodel_hook_tokens_real_tokens(&spans)) {
        c.padded = true;
        c.real_tokens = (const fm_span *)spans.ptr;
        c.n_real_tokens = spans.len;
    }
    fm_status st = fm_hook_forward(&c, (fm_activation){act.__handle});
    if (c.padded) flexmodel_hook_tokens_list_span_free(&spans);
    free(point);
    exports_flexmodel_hook_plugin_call_context_free(ctx);
    if (st != FM_OK) {
        to_host(st, err);
        return false;
    }
    return true;
}

/* ----------------------------------------------------------- activation */

#define ACT(a) ((flexmodel_hook_tensor_borrow_activation_t){(a).handle})
#define CHECK(call)                                  \
    do {                                             \
        flexmodel_hook_types_hook_error_t e_;        \
        if (!(call)) return from_host(&e_);          \
    } while (0)
#define E (&e_)

void fm_floats_free(fm_floats *f) {
    free(f->ptr);
    f->ptr = NULL;
    f->len = 0;
}

void fm_bytes_free(fm_bytes *b) {
    free(b->ptr);
    b->ptr = NULL;
    b->len = 0;
}

uint64_t fm_numel(fm_activation a) { return flexmodel_hook_tensor_method_activation_numel(ACT(a)); }
bool fm_writable(fm_activation a) { return flexmodel_hook_tensor_method_activation_writable(ACT(a)); }

fm_status fm_read(fm_activation a, uint64_t offset, uint64_t len, fm_floats *out) {
    hook_plugin_list_f32_t l;
    CHECK(flexmodel_hook_tensor_method_activation_read(ACT(a), offset, len, &l, E));
    *out = (fm_floats){l.ptr, l.len};
    return FM_OK;
}

fm_status fm_read_bytes(fm_activation a, uint64_t offset, uint64_t len, fm_bytes *out) {
    hook_plugin_list_u8_t l;
    CHECK(flexmodel_hook_tensor_method_activation_read_bytes(ACT(a), offset, len, &l, E));
    *out = (fm_bytes){l.ptr, l.len};
    return FM_OK;
}

fm_status fm_read_slice(fm_activation a, const fm_slice *s, fm_floats *out) {
    flexmodel_hook_types_dim_range_t buf[FM_MAX_DIMS];
    flexmodel_hook_types_slice_t ws = lower(s, buf);
    hook_plugin_list_f32_t l;
    CHECK(flexmodel_hook_tensor_method_activation_read_slice(ACT(a), &ws, &l, E));
    *out = (fm_floats){l.ptr, l.len};
    return FM_OK;
}

fm_status fm_slice_shape(fm_activation a, const fm_slice *s, uint64_t *shape, size_t *rank) {
    flexmodel_hook_types_dim_range_t buf[FM_MAX_DIMS];
    flexmodel_hook_types_slice_t ws = lower(s, buf);
    hook_plugin_list_u64_t l;
    CHECK(flexmodel_hook_tensor_method_activation_slice_shape(ACT(a), &ws, &l, E));
    size_t n = l.len < *rank ? l.len : *rank;
    memcpy(shape, l.ptr, n * sizeof(uint64_t));
    *rank = l.len;
    hook_plugin_list_u64_free(&l);
    return FM_OK;
}

fm_status fm_write(fm_activation a, uint64_t offset, const float *values, size_t n) {
    hook_plugin_list_f32_t l = {(float *)values, n};
    CHECK(flexmodel_hook_tensor_method_activation_write(ACT(a), offset, &l, E));
    return FM_OK;
}

fm_status fm_write_bytes(fm_activation a, uint64_t offset, const uint8_t *bytes, size_t n) {
    hook_plugin_list_u8_t l = {(uint8_t *)bytes, n};
    CHECK(flexmodel_hook_tensor_method_activation_write_bytes(ACT(a), offset, &l, E));
    return FM_OK;
}

fm_status fm_write_slice(fm_activation a, const fm_slice *s, const float *values, size_t n) {
    flexmodel_hook_types_dim_range_t buf[FM_MAX_DIMS];
    flexmodel_hook_types_slice_t ws = lower(s, buf);
    hook_plugin_list_f32_t l = {(float *)values, n};
    CHECK(flexmodel_hook_tensor_method_activation_write_slice(ACT(a), &ws, &l, E));
    return FM_OK;
}

fm_status fm_fill(fm_activation a, const fm_slice *s, float value) {
    flexmodel_hook_types_dim_range_t buf[FM_MAX_DIMS];
    flexmodel_hook_types_slice_t ws = lower(s, buf);
    CHECK(flexmodel_hook_tensor_method_activation_fill(ACT(a), &ws, value, E));
    return FM_OK;
}

fm_status fm_scale(fm_activation a, const fm_slice *s, float factor) {
    flexmodel_hook_types_dim_range_t buf[FM_MAX_DIMS];
    flexmodel_hook_types_slice_t ws = lower(s, buf);
    CHECK(flexmodel_hook_tensor_method_activation_scale(ACT(a), &ws, factor, E));
    return FM_OK;
}

fm_status fm_add_vector(fm_activation a, const fm_slice *s, const float *v, size_t n, float alpha) {
    flexmodel_hook_types_dim_range_t buf[FM_MAX_DIMS];
    flexmodel_hook_types_slice_t ws = lower(s, buf);
    hook_plugin_list_f32_t l = {(float *)v, n};
    CHECK(flexmodel_hook_tensor_method_activation_add_vector(ACT(a), &ws, &l, alpha, E));
    return FM_OK;
}

/* --------------------------------------------------------------- output */

fm_status fm_emit(const char *name, const uint64_t *shape, size_t rank, const float *values, size_t n) {
    hook_plugin_string_t nm = str(name);
    hook_plugin_list_u64_t sh = {(uint64_t *)shape, rank};
    hook_plugin_list_f32_t v = {(float *)values, n};
    CHECK(flexmodel_hook_output_emit(&nm, &sh, &v, E));
    return FM_OK;
}

fm_status fm_emit_bytes(const char *name, const uint64_t *shape, size_t rank, fm_dtype dtype, const uint8_t *bytes,
                        size_t n) {
    hook_plugin_string_t nm = str(name);
    hook_plugin_list_u64_t sh = {(uint64_t *)shape, rank};
    hook_plugin_list_u8_t b = {(uint8_t *)bytes, n};
    CHECK(flexmodel_hook_output_emit_bytes(&nm, &sh, (flexmodel_hook_output_dtype_t)dtype, &b, E));
    return FM_OK;
}

fm_status fm_emit_activation(const char *name, fm_activation a, const fm_slice *s) {
    flexmodel_hook_types_dim_range_t buf[FM_MAX_DIMS];
    flexmodel_hook_types_slice_t ws = lower(s, buf);
    hook_plugin_string_t nm = str(name);
    CHECK(flexmodel_hook_output_emit_activation(&nm, ACT(a), &ws, E));
    return FM_OK;
}

fm_status fm_emit_real(const char *name, fm_activation a, const fm_slice *s) {
    flexmodel_hook_types_dim_range_t buf[FM_MAX_DIMS];
    flexmodel_hook_types_slice_t ws = lower(s, buf);
    hook_plugin_string_t nm = str(name);
    CHECK(flexmodel_hook_tokens_emit_real(&nm, ACT(a), &ws, E));
    return FM_OK;
}

/* ---------------------------------------------------- state, log, random */

bool fm_state_get(const char *key, fm_bytes *out) {
    hook_plugin_string_t k = str(key);
    hook_plugin_list_u8_t v;
    if (!flexmodel_hook_state_get(&k, &v)) return false;
    *out = (fm_bytes){v.ptr, v.len};
    return true;
}

fm_status fm_state_set(const char *key, const uint8_t *value, size_t n) {
    hook_plugin_string_t k = str(key);
    hook_plugin_list_u8_t v = {(uint8_t *)value, n};
    CHECK(flexmodel_hook_state_set(&k, &v, E));
    return FM_OK;
}

void fm_state_remove(const char *key) {
    hook_plugin_string_t k = str(key);
    flexmodel_hook_state_remove(&k);
}

void fm_log(fm_level level, const char *fmt, ...) {
    char small[256];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(small, sizeof small, fmt, ap);
    va_end(ap);
    char *msg = small;
    if (n >= (int)sizeof small) {
        msg = malloc((size_t)n + 1);
        if (!msg) return;
        va_start(ap, fmt);
        vsnprintf(msg, (size_t)n + 1, fmt, ap);
        va_end(ap);
    }
    hook_plugin_string_t m = {(uint8_t *)msg, n > 0 ? (size_t)n : 0};
    flexmodel_hook_log_log((flexmodel_hook_log_level_t)level, &m);
    if (msg != small) free(msg);
}

uint64_t fm_random_u64(void) { return flexmodel_hook_random_next_u64(); }

fm_floats fm_random_uniform(uint32_t n) {
    hook_plugin_list_f32_t l;
    flexmodel_hook_random_uniform(n, &l);
    return (fm_floats){l.ptr, l.len};
}

fm_floats fm_random_normal(uint32_t n) {
    hook_plugin_list_f32_t l;
    flexmodel_hook_random_normal(n, &l);
    return (fm_floats){l.ptr, l.len};
}
