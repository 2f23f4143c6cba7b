//! `steer` in Zig: add `alpha * vector` to every position's last-dimension
//! row (activation addition). The same configuration as the Rust plugin
//! (plugins/steer): {"vector": [...], "alpha": 4.0, "positions": [-1],
//! "normalize": false, "new_tokens_only": false}.

const std = @import("std");
const hook = @import("flexmodel_hook");

pub const info = hook.Info{
    .name = "steer-zig",
    .version = "0.1.0",
    .description = "Add a scaled steering vector to the residual stream",
    .hook_points = &.{"blocks.*.hook_resid_*"},
    .edits = true,
};

const alloc = std.heap.c_allocator;
var vector: []f32 = &.{};
var alpha: f32 = 1;
var positions: []i64 = &.{};
var new_tokens_only = false;

pub fn init(config: *const hook.Config) hook.Error!hook.Access {
    try config.fields(&.{ "vector", "alpha", "positions", "normalize", "new_tokens_only" });
    if (vector.len > 0) alloc.free(vector);
    if (positions.len > 0) alloc.free(positions);
    vector = &.{};
    positions = &.{};
    vector = try config.floats("vector", true);
    alpha = try config.float("alpha", false, 1.0);
    positions = try config.ints("positions");
    const normalize = try config.boolean("normalize", false);
    new_tokens_only = try config.boolean("new_tokens_only", false);
    if (vector.len == 0) return hook.fail(error.InvalidConfig, "`vector` must not be empty", .{});
    var finite = std.math.isFinite(alpha);
    for (vector) |v| finite = finite and std.math.isFinite(v);
    if (!finite) return hook.fail(error.InvalidConfig, "`vector` and `alpha` must be finite", .{});
    if (normalize) {
        var n: f32 = 0;
        for (vector) |v| n += v * v;
        n = @sqrt(n);
        if (n == 0) return hook.fail(error.InvalidConfig, "cannot normalize a zero vector", .{});
        for (vector) |*v| v.* /= n;
    }
    return .{ .mode = .in_place };
}

pub fn forward(ctx: *const hook.Context, act: hook.Activation) hook.Error!void {
    if (new_tokens_only) {
        const g = ctx.generation orelse return;
        if (g.step == 0) return;
    }
    const d: u64 = if (ctx.shape.len > 0) ctx.shape[ctx.shape.len - 1] else 0;
    if (d != vector.len)
        return hook.fail(error.InvalidArgument, "steering vector has {d} elements but {s} has last dimension {d}", .{ vector.len, ctx.hook_point, d });
    if (positions.len == 0) return act.addVector(&hook.Slice.all(), vector, alpha);
    for (positions) |p| try act.addVector(&hook.Slice.token(p), vector, alpha);
}

comptime {
    hook.exportHook(@This());
}
