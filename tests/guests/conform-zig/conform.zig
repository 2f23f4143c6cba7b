//! The conformance and cost guest in Zig: what tests/guests/conform (Rust)
//! does, bit for bit; see its modes there.

const std = @import("std");
const hook = @import("flexmodel_hook");

pub const info = hook.Info{
    .name = "conform",
    .version = "0.1.0",
    .description = "Conformance and cost guest",
    .edits = true,
};

const Mode = enum { state, random, fail, trap, spin, empty, read, norm, scale };
var mode: Mode = .empty;
var factor: f32 = 1;

pub fn init(config: *const hook.Config) hook.Error!hook.Access {
    try config.fields(&.{ "mode", "factor" });
    if (!config.has("mode")) return hook.fail(error.InvalidConfig, "missing field `mode`", .{});
    const m = try config.string("mode", "");
    factor = try config.float("factor", false, 1.0);
    mode = std.meta.stringToEnum(Mode, m) orelse return hook.fail(error.InvalidConfig, "unknown mode \"{s}\"", .{m});
    return switch (mode) {
        .fail, .trap, .spin, .scale => .{ .mode = .in_place },
        else => .{ .mode = .read_only },
    };
}

pub fn forward(ctx: *const hook.Context, act: hook.Activation) hook.Error!void {
    const all = hook.Slice.all();
    switch (mode) {
        .state => {
            var n: u64 = 0;
            if (hook.state.get("count")) |b| {
                defer b.deinit();
                if (b.items.len == 8) n = std.mem.readInt(u64, b.items[0..8], .little);
            }
            n += 1;
            var buf: [8]u8 = undefined;
            std.mem.writeInt(u64, &buf, n, .little);
            try hook.state.set("count", &buf);
            try hook.emit("count", &.{1}, &.{@floatFromInt(n)});
        },
        .random => {
            const u = hook.random.uniform(8);
            defer u.deinit();
            try hook.emit("uniform", &.{8}, u.items);
            const g = hook.random.normal(8);
            defer g.deinit();
            try hook.emit("normal", &.{8}, g.items);
            const x = hook.random.nextU64();
            var parts: [4]f32 = undefined;
            for (&parts, 0..) |*p, i| p.* = @floatFromInt((x >> @intCast(16 * i)) & 0xffff);
            try hook.emit("u64", &.{4}, &parts);
        },
        .fail, .trap, .spin => {
            try act.fill(&all, 7.0);
            if (mode == .fail) return hook.fail(error.Failed, "failed on purpose", .{});
            if (mode == .trap) @trap();
            var x: u64 = 1;
            while (true) {
                x = x *% 6364136223846793005 +% 1;
                std.mem.doNotOptimizeAway(x);
            }
        },
        .empty => {},
        .read => {
            const b = try act.readBytes(0, act.numel());
            b.deinit();
        },
        .norm => {
            const d: usize = @intCast(@max(if (ctx.shape.len > 0) ctx.shape[ctx.shape.len - 1] else 1, 1));
            const b = try act.readBytes(0, act.numel());
            defer b.deinit();
            const rows = b.items.len / 4 / d;
            const out = std.heap.c_allocator.alloc(f32, rows) catch return hook.fail(error.Failed, "out of memory", .{});
            defer std.heap.c_allocator.free(out);
            for (0..rows) |r| {
                var s: f64 = 0;
                for (0..d) |k| {
                    const i = (r * d + k) * 4;
                    const v: f64 = @as(f32, @bitCast(std.mem.readInt(u32, b.items[i..][0..4], .little)));
                    s += v * v;
                }
                out[r] = @floatCast(@sqrt(s));
            }
            try hook.emit("norm", &.{rows}, out);
        },
        .scale => try act.scale(&all, factor),
    }
}

comptime {
    hook.exportHook(@This());
}
