/* `retrieve` in C: emit the activation, or a slice of it, into the output
 * dictionary (the host copies it; nothing crosses the sandbox boundary).
 * The same configuration as the Rust plugin (plugins/retrieve):
 * {"slice": [null, -1], "name": "last", "padding": "drop"|"keep"}, all
 * optional; in a padded batch "drop" (the default) keeps real tokens only. */
#include <string.h>

#include "flexmodel_hook.h"

static fm_slice slice;
static char name[256];
static bool keep_padding;

void fm_hook_info(fm_info *info) {
    info->name = "retrieve-c";
    info->version = "0.2.0";
    info->description = "Save the activation (or a slice of it) to the output dictionary";
}

fm_status fm_hook_init(const fm_json *config, fm_access *access) {
    static const char *const fields[] = {"slice", "name", "padding"};
    fm_status st;
    const char *n, *padding;
    if ((st = fm_config_fields(config, fields, 3))) return st;
    if ((st = fm_slice_from_json(fm_json_get(config, "slice"), &slice))) return st;
    if ((st = fm_config_string(config, "name", "", &n))) return st;
    if ((st = fm_config_string(config, "padding", "drop", &padding))) return st;
    if (strcmp(padding, "drop") != 0 && strcmp(padding, "keep") != 0)
        return fm_error(FM_INVALID_CONFIG, "`padding`: expected \"drop\" or \"keep\", got \"%s\"", padding);
    if (strlen(n) >= sizeof name) return fm_error(FM_INVALID_CONFIG, "`name` is too long");
    strcpy(name, n);
    keep_padding = strcmp(padding, "keep") == 0;
    access->mode = FM_READ_ONLY;
    access->has_reads = true;
    access->reads = slice;
    return FM_OK;
}

fm_status fm_hook_forward(const fm_context *ctx, fm_activation act) {
    if (ctx->padded && ctx->has_token_dim && !keep_padding) return fm_emit_real(name, act, &slice);
    return fm_emit_activation(name, act, &slice);
}
