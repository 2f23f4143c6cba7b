//! `scale` in Zig: multiply the activation, or a slice of it, by a factor.
//! The same configuration as the Rust plugin (plugins/scale):
//! {"factor": 2.0, "slice": [null, -1]} (`slice` optional).

const std = @import("std");
const hook = @import("flexmodel_hook");

pub const info = hook.Info{
    .name = "scale-zig",
    .version = "0.1.0",
    .description = "Multiply the activation, or a slice of it, by a factor",
    .edits = true,
};

var factor: f32 = 1;
var slice = hook.Slice{};

pub fn init(config: *const hook.Config) hook.Error!hook.Access {
    try config.fields(&.{ "factor", "slice" });
    factor = try config.float("factor", true, 0);
    slice = try config.slice("slice");
    if (!std.math.isFinite(factor)) return hook.fail(error.InvalidConfig, "factor must be finite", .{});
    return .{ .mode = .in_place };
}

pub fn forward(ctx: *const hook.Context, act: hook.Activation) hook.Error!void {
    _ = ctx;
    try act.scale(&slice, factor);
}

comptime {
    hook.exportHook(@This());
}
