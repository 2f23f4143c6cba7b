/* The conformance and cost guest in C: what tests/guests/conform (Rust)
 * does, bit for bit; see its modes there. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "flexmodel_hook.h"

static char mode[16];
static float factor;

void fm_hook_info(fm_info *info) {
    info->name = "conform";
    info->version = "0.1.0";
    info->description = "Conformance and cost guest";
    info->edits = true;
}

fm_status fm_hook_init(const fm_json *config, fm_access *access) {
    static const char *const fields[] = {"mode", "factor"};
    static const char *const modes[] = {"state", "random", "fail", "trap", "spin", "empty", "read", "norm", "scale"};
    const char *m;
    fm_status st;
    if ((st = fm_config_fields(config, fields, 2))) return st;
    if (!fm_json_get(config, "mode")) return fm_error(FM_INVALID_CONFIG, "missing field `mode`");
    if ((st = fm_config_string(config, "mode", "", &m))) return st;
    if ((st = fm_config_f32(config, "factor", false, 1.0f, &factor))) return st;
    bool known = false;
    for (size_t i = 0; i < sizeof modes / sizeof *modes; i++) known |= strcmp(m, modes[i]) == 0;
    if (!known || strlen(m) >= sizeof mode) return fm_error(FM_INVALID_CONFIG, "unknown mode \"%s\"", m);
    strcpy(mode, m);
    bool edits = !strcmp(m, "fail") || !strcmp(m, "trap") || !strcmp(m, "spin") || !strcmp(m, "scale");
    access->mode = edits ? FM_IN_PLACE : FM_READ_ONLY;
    return FM_OK;
}

fm_status fm_hook_forward(const fm_context *ctx, fm_activation act) {
    fm_slice all = fm_slice_all();
    fm_status st;
    if (!strcmp(mode, "state")) {
        uint64_t n = 0;
        fm_bytes b;
        if (fm_state_get("count", &b)) {
            if (b.len == 8) memcpy(&n, b.ptr, 8);
            fm_bytes_free(&b);
        }
        n += 1;
        if ((st = fm_state_set("count", (const uint8_t *)&n, 8))) return st;
        float v = (float)n;
        uint64_t shape[1] = {1};
        return fm_emit("count", shape, 1, &v, 1);
    }
    if (!strcmp(mode, "random")) {
        uint64_t shape8[1] = {8}, shape4[1] = {4};
        fm_floats u = fm_random_uniform(8);
        st = fm_emit("uniform", shape8, 1, u.ptr, u.len);
        fm_floats_free(&u);
        if (st) return st;
        fm_floats g = fm_random_normal(8);
        st = fm_emit("normal", shape8, 1, g.ptr, g.len);
        fm_floats_free(&g);
        if (st) return st;
        uint64_t x = fm_random_u64();
        float parts[4];
        for (int i = 0; i < 4; i++) parts[i] = (float)((x >> (16 * i)) & 0xffff);
        return fm_emit("u64", shape4, 1, parts, 4);
    }
    if (!strcmp(mode, "fail") || !strcmp(mode, "trap") || !strcmp(mode, "spin")) {
        if ((st = fm_fill(act, &all, 7.0f))) return st;
        if (!strcmp(mode, "fail")) return fm_error(FM_FAILED, "failed on purpose");
        if (!strcmp(mode, "trap")) abort();
        volatile uint64_t x = 1;
        for (;;) x = x * 6364136223846793005ull + 1;
    }
    if (!strcmp(mode, "empty")) return FM_OK;
    if (!strcmp(mode, "read")) {
        fm_bytes b;
        if ((st = fm_read_bytes(act, 0, fm_numel(act), &b))) return st;
        fm_bytes_free(&b);
        return FM_OK;
    }
    if (!strcmp(mode, "norm")) {
        size_t d = ctx->rank ? (size_t)ctx->shape[ctx->rank - 1] : 1;
        if (d == 0) d = 1;
        fm_bytes b;
        if ((st = fm_read_bytes(act, 0, fm_numel(act), &b))) return st;
        size_t rows = b.len / 4 / d;
        float *out = malloc((rows ? rows : 1) * sizeof(float));
        if (!out) {
            fm_bytes_free(&b);
            return fm_error(FM_FAILED, "out of memory");
        }
        const float *v = (const float *)b.ptr;
        for (size_t r = 0; r < rows; r++) {
            double s = 0;
            for (size_t c = 0; c < d; c++) {
                double x = (double)v[r * d + c];
                s += x * x;
            }
            out[r] = (float)sqrt(s);
        }
        uint64_t shape[1] = {rows};
        st = fm_emit("norm", shape, 1, out, rows);
        free(out);
        fm_bytes_free(&b);
        return st;
    }
    return fm_scale(act, &all, factor);
}
