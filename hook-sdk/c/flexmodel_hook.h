/* FlexModel HookFunctions in C: a thin layer over the bindings wit-bindgen
 * generates from wit/ (hook_plugin.h, never edited), with the concepts of
 * the Rust SDK (hook-sdk/src): a hook is three functions the plugin defines,
 *
 *     void      fm_hook_info(fm_info *info);
 *     fm_status fm_hook_init(const fm_json *config, fm_access *access);
 *     fm_status fm_hook_forward(const fm_context *ctx, fm_activation act);
 *
 * and the SDK exports the world's `plugin` interface on top of them: it
 * parses the JSON configuration (an empty one is `{}`; malformed JSON is an
 * `invalid-config` error before `fm_hook_init` runs), copies what the host
 * frees after a call, drops the borrowed activation when the call returns,
 * and turns an `fm_status` with its message (`fm_error`) into the typed
 * `hook-error`.
 *
 * The activation stays in host memory: read only what you need (`fm_read`,
 * `fm_read_bytes`, `fm_read_slice`), edit with host-side bulk operations
 * (`fm_fill`, `fm_scale`, `fm_add_vector`), emit into the output dictionary
 * (`fm_emit_activation`, `fm_emit_real`, `fm_emit`). Buffers the host hands
 * back (`fm_floats`, `fm_bytes`) are the plugin's: free them with
 * `fm_floats_free` / `fm_bytes_free`.
 *
 * Build: docs/hooks/c.md (clang --target=wasm32-wasi, then
 * `flexmodel-guest componentize`).
 */
#ifndef FLEXMODEL_HOOK_H
#define FLEXMODEL_HOOK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "flexmodel_json.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The outcome of a call; anything but FM_OK is the `hook-error` variant of
 * that name, with the message last given to `fm_error`. */
typedef enum {
    FM_OK = 0,
    FM_INVALID_CONFIG,
    FM_INVALID_ARGUMENT,
    FM_UNSUPPORTED,
    FM_LIMIT_EXCEEDED,
    FM_FAILED,
} fm_status;

/* Record an error's message (printf-style) and return `kind`:
 * `return fm_error(FM_INVALID_CONFIG, "factor must be finite");` */
fm_status fm_error(fm_status kind, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

typedef enum { FM_F32 = 0, FM_F16, FM_BF16 } fm_dtype;

/* Bytes per element of `d`. */
size_t fm_dtype_size(fm_dtype d);

/* One dimension of a slice, Python slice semantics (negative from the end;
 * no stop: to the end); out-of-range bounds are the host's errors. */
typedef struct {
    int64_t start;
    bool has_stop;
    int64_t stop;
    uint64_t step;
} fm_dim;

#define FM_MAX_DIMS 8

/* A strided slice: one dim per leading dimension, the rest whole. */
typedef struct {
    size_t ndims;
    fm_dim dims[FM_MAX_DIMS];
} fm_slice;

fm_slice fm_slice_all(void);
/* Token `pos` of every sequence of a `[batch, seq, ...]` activation. */
fm_slice fm_slice_token(int64_t pos);
fm_slice fm_slice_last_token(void);
/* A slice as written in a configuration (see the Rust SDK's SliceSpec): a
 * list, one entry per leading dimension, each null, an integer, [start,
 * stop] or [start, stop, step]; a missing value (NULL) is the whole tensor.
 * FM_INVALID_CONFIG on anything else. */
fm_status fm_slice_from_json(const fm_json *spec, fm_slice *out);

typedef enum { FM_READ_ONLY = 0, FM_IN_PLACE, FM_REPLACE } fm_mode;

/* What `fm_hook_init` declares: how it edits, and the only part it reads
 * (`has_reads`), so the host gathers no more. */
typedef struct {
    fm_mode mode;
    bool has_reads;
    fm_slice reads;
} fm_access;

/* What the plugin says about itself (copied by the SDK). */
typedef struct {
    const char *name;
    const char *version;
    const char *description;
    /* Hook-point patterns it is meant for (informational). */
    const char *const *hook_points;
    size_t n_hook_points;
    bool edits;
} fm_info;

/* One batch row's real tokens along the token dimension. */
typedef struct {
    uint32_t start;
    uint32_t len;
} fm_span;

/* Where and when a hook is called. Valid during the call. */
typedef struct {
    /* Canonical hook-point name (NUL-terminated). */
    const char *hook_point;
    /* Logical (gathered) shape. */
    const uint64_t *shape;
    size_t rank;
    fm_dtype dtype;
    uint32_t tp_rank, tp_size, pp_rank, pp_size, dp_rank, dp_size;
    uint32_t global_rank, world_size;
    /* Forward passes started before this one. */
    uint64_t forward_index;
    /* During generation: the step (0 = the prompt) and the position of the
     * pass's first token. */
    bool generating;
    uint64_t gen_step, gen_position;
    /* A backward hook: the tensor is the gradient. */
    bool backward;
    /* The token dimension (1 for [batch, seq, ...]), if any. */
    bool has_token_dim;
    uint32_t token_dim;
    /* In a padded batch, each row's real tokens (`n_real_tokens` rows);
     * `padded` false when every token is real. */
    bool padded;
    const fm_span *real_tokens;
    size_t n_real_tokens;
} fm_context;

/* The activation of the call (a borrowed host resource). */
typedef struct {
    int32_t handle;
} fm_activation;

/* A buffer the host handed back; free with fm_floats_free / fm_bytes_free. */
typedef struct {
    float *ptr;
    size_t len;
} fm_floats;
typedef struct {
    uint8_t *ptr;
    size_t len;
} fm_bytes;
void fm_floats_free(fm_floats *f);
void fm_bytes_free(fm_bytes *b);

/* --- the activation --- */
uint64_t fm_numel(fm_activation a);
bool fm_writable(fm_activation a);
/* `len` elements from flat element `offset`, as f32. */
fm_status fm_read(fm_activation a, uint64_t offset, uint64_t len, fm_floats *out);
/* Raw little-endian bytes in the native dtype (the fastest read). */
fm_status fm_read_bytes(fm_activation a, uint64_t offset, uint64_t len, fm_bytes *out);
fm_status fm_read_slice(fm_activation a, const fm_slice *s, fm_floats *out);
/* Shape of a slice; `*rank` in, capacity of `shape`; out, its rank. */
fm_status fm_slice_shape(fm_activation a, const fm_slice *s, uint64_t *shape, size_t *rank);
fm_status fm_write(fm_activation a, uint64_t offset, const float *values, size_t n);
fm_status fm_write_bytes(fm_activation a, uint64_t offset, const uint8_t *bytes, size_t n);
fm_status fm_write_slice(fm_activation a, const fm_slice *s, const float *values, size_t n);
/* Host-side bulk operations: nothing crosses the sandbox boundary. */
fm_status fm_fill(fm_activation a, const fm_slice *s, float value);
fm_status fm_scale(fm_activation a, const fm_slice *s, float factor);
fm_status fm_add_vector(fm_activation a, const fm_slice *s, const float *v, size_t n, float alpha);

/* --- the output dictionary ("" is the hook point's own name) --- */
fm_status fm_emit(const char *name, const uint64_t *shape, size_t rank, const float *values, size_t n);
fm_status fm_emit_bytes(const char *name, const uint64_t *shape, size_t rank, fm_dtype dtype,
                        const uint8_t *bytes, size_t n);
fm_status fm_emit_activation(const char *name, fm_activation a, const fm_slice *s);
/* Only real tokens of a padded batch: `s` applies to each row's real part. */
fm_status fm_emit_real(const char *name, fm_activation a, const fm_slice *s);

/* --- state that outlives a call --- */
/* The value under `key` (true) or none (false). */
bool fm_state_get(const char *key, fm_bytes *out);
fm_status fm_state_set(const char *key, const uint8_t *value, size_t n);
void fm_state_remove(const char *key);

/* --- log, random --- */
typedef enum { FM_TRACE = 0, FM_DEBUG, FM_INFO, FM_WARN, FM_ERROR } fm_level;
void fm_log(fm_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
uint64_t fm_random_u64(void);
/* `n` values uniform in [0, 1) / standard normal. */
fm_floats fm_random_uniform(uint32_t n);
fm_floats fm_random_normal(uint32_t n);

/* --- configuration: each getter FM_INVALID_CONFIG with a message naming
 * the field when it is of the wrong type (null included); a missing field
 * takes the default (or is an error when required) --- */
/* `config` is an object with only `allowed` fields, none twice. */
fm_status fm_config_fields(const fm_json *config, const char *const *allowed, size_t n);
fm_status fm_config_f32(const fm_json *config, const char *key, bool required, float dflt, float *out);
fm_status fm_config_bool(const fm_json *config, const char *key, bool dflt, bool *out);
/* The string (valid while `config` is), or `dflt`. */
fm_status fm_config_string(const fm_json *config, const char *key, const char *dflt, const char **out);
/* A list of numbers as f32 (malloc'd; free it), empty when missing unless
 * required. */
fm_status fm_config_f32_list(const fm_json *config, const char *key, bool required, float **out, size_t *n);
/* A list of integers (malloc'd; free it), empty when missing. */
fm_status fm_config_i64_list(const fm_json *config, const char *key, int64_t **out, size_t *n);

/* --- what the plugin defines --- */
void fm_hook_info(fm_info *info);
fm_status fm_hook_init(const fm_json *config, fm_access *access);
fm_status fm_hook_forward(const fm_context *ctx, fm_activation act);

#ifdef __cplusplus
}
#endif
#endif
