//! `retrieve` in Zig: emit the activation, or a slice of it, into the
//! output dictionary (the host copies it; nothing crosses the sandbox).
//! The same configuration as the Rust plugin (plugins/retrieve):
//! {"slice": [null, -1], "name": "last", "padding": "drop"|"keep"}, all
//! optional; in a padded batch "drop" (the default) keeps real tokens only.

const std = @import("std");
const hook = @import("flexmodel_hook");

pub const info = hook.Info{
    .name = "retrieve-zig",
    .version = "0.2.0",
    .description = "Save the activation (or a slice of it) to the output dictionary",
};

var slice = hook.Slice{};
var name_buf: [256]u8 = undefined;
var name: []const u8 = "";
var keep_padding = false;

pub fn init(config: *const hook.Config) hook.Error!hook.Access {
    try config.fields(&.{ "slice", "name", "padding" });
    slice = try config.slice("slice");
    const n = try config.string("name", "");
    const padding = try config.string("padding", "drop");
    if (!std.mem.eql(u8, padding, "drop") and !std.mem.eql(u8, padding, "keep"))
        return hook.fail(error.InvalidConfig, "`padding`: expected \"drop\" or \"keep\", got \"{s}\"", .{padding});
    if (n.len > name_buf.len) return hook.fail(error.InvalidConfig, "`name` is too long", .{});
    @memcpy(name_buf[0..n.len], n);
    name = name_buf[0..n.len];
    keep_padding = std.mem.eql(u8, padding, "keep");
    return .{ .mode = .read_only, .reads = slice };
}

pub fn forward(ctx: *const hook.Context, act: hook.Activation) hook.Error!void {
    if (ctx.real_tokens != null and ctx.token_dim != null and !keep_padding) return act.emitReal(name, &slice);
    return act.emit(name, &slice);
}

comptime {
    hook.exportHook(@This());
}
