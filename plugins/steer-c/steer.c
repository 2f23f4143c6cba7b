/* `steer` in C: add `alpha * vector` to every position's last-dimension row
 * (activation addition). The same configuration as the Rust plugin
 * (plugins/steer): {"vector": [...], "alpha": 4.0, "positions": [-1],
 * "normalize": false, "new_tokens_only": false}. */
#include <math.h>
#include <stdlib.h>

#include "flexmodel_hook.h"

static float *vector;
static size_t dim;
static float alpha;
static int64_t *positions;
static size_t n_positions;
static bool new_tokens_only;

void fm_hook_info(fm_info *info) {
    static const char *const points[] = {"blocks.*.hook_resid_*"};
    info->name = "steer-c";
    info->version = "0.1.0";
    info->description = "Add a scaled steering vector to the residual stream";
    info->hook_points = points;
    info->n_hook_points = 1;
    info->edits = true;
}

fm_status fm_hook_init(const fm_json *config, fm_access *access) {
    static const char *const fields[] = {"vector", "alpha", "positions", "normalize", "new_tokens_only"};
    fm_status st;
    bool normalize;
    free(vector);
    free(positions);
    vector = NULL;
    positions = NULL;
    if ((st = fm_config_fields(config, fields, 5))) return st;
    if ((st = fm_config_f32_list(config, "vector", true, &vector, &dim))) return st;
    if ((st = fm_config_f32(config, "alpha", false, 1.0f, &alpha))) return st;
    if ((st = fm_config_i64_list(config, "positions", &positions, &n_positions))) return st;
    if ((st = fm_config_bool(config, "normalize", false, &normalize))) return st;
    if ((st = fm_config_bool(config, "new_tokens_only", false, &new_tokens_only))) return st;
    if (dim == 0) return fm_error(FM_INVALID_CONFIG, "`vector` must not be empty");
    bool finite = isfinite(alpha);
    for (size_t i = 0; i < dim; i++) finite &= isfinite(vector[i]);
    if (!finite) return fm_error(FM_INVALID_CONFIG, "`vector` and `alpha` must be finite");
    if (normalize) {
        float n = 0.0f;
        for (size_t i = 0; i < dim; i++) n += vector[i] * vector[i];
        n = sqrtf(n);
        if (n == 0.0f) return fm_error(FM_INVALID_CONFIG, "cannot normalize a zero vector");
        for (size_t i = 0; i < dim; i++) vector[i] /= n;
    }
    access->mode = FM_IN_PLACE;
    return FM_OK;
}

fm_status fm_hook_forward(const fm_context *ctx, fm_activation act) {
    if (new_tokens_only && !(ctx->generating && ctx->gen_step > 0)) return FM_OK;
    uint64_t d = ctx->rank ? ctx->shape[ctx->rank - 1] : 0;
    if (d != dim)
        return fm_error(FM_INVALID_ARGUMENT, "steering vector has %zu elements but %s has last dimension %llu", dim,
                        ctx->hook_point, (unsigned long long)d);
    if (n_positions == 0) {
        fm_slice all = fm_slice_all();
        return fm_add_vector(act, &all, vector, dim, alpha);
    }
    for (size_t i = 0; i < n_positions; i++) {
        fm_slice s = fm_slice_token(positions[i]);
        fm_status st = fm_add_vector(act, &s, vector, dim, alpha);
        if (st) return st;
    }
    return FM_OK;
}
