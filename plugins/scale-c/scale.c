/* `scale` in C: multiply the activation, or a slice of it, by a factor.
 * The same configuration as the Rust plugin (plugins/scale):
 * {"factor": 2.0, "slice": [null, -1]} (`slice` optional). */
#include <math.h>

#include "flexmodel_hook.h"

static float factor;
static fm_slice slice;

void fm_hook_info(fm_info *info) {
    info->name = "scale-c";
    info->version = "0.1.0";
    info->description = "Multiply the activation, or a slice of it, by a factor";
    info->edits = true;
}

fm_status fm_hook_init(const fm_json *config, fm_access *access) {
    static const char *const fields[] = {"factor", "slice"};
    fm_status st;
    if ((st = fm_config_fields(config, fields, 2))) return st;
    if ((st = fm_config_f32(config, "factor", true, 0, &factor))) return st;
    if ((st = fm_slice_from_json(fm_json_get(config, "slice"), &slice))) return st;
    if (!isfinite(factor)) return fm_error(FM_INVALID_CONFIG, "factor must be finite");
    access->mode = FM_IN_PLACE;
    return FM_OK;
}

fm_status fm_hook_forward(const fm_context *ctx, fm_activation act) {
    (void)ctx;
    return fm_scale(act, &slice, factor);
}
