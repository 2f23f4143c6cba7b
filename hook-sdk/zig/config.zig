//! A hook's JSON configuration (std.json), checked as the Rust SDK's serde
//! derive checks it: an object, no unknown field, each field of its type
//! (null is a wrong type), defaults for missing fields. Every failure is an
//! `error.InvalidConfig` with a message naming the field.

const std = @import("std");
const hook = @import("flexmodel_hook.zig");

const alloc = std.heap.c_allocator;
const Value = std.json.Value;

fn kind(v: Value) []const u8 {
    return switch (v) {
        .null => "null",
        .bool => "a boolean",
        .integer, .float, .number_string => "a number",
        .string => "a string",
        .array => "an array",
        .object => "an object",
    };
}

/// A JSON number as f64 (big integers arrive as their text).
fn number(v: Value) ?f64 {
    return switch (v) {
        .integer => |i| @floatFromInt(i),
        .float => |f| f,
        .number_string => |s| std.fmt.parseFloat(f64, s) catch null,
        else => null,
    };
}

/// A JSON number as f32, rounded once (an integer straight from it, as
/// Rust's `as f32`).
fn toF32(v: Value) ?f32 {
    return switch (v) {
        .integer => |i| @floatFromInt(i),
        else => if (number(v)) |f| @floatCast(f) else null,
    };
}

pub const Config = struct {
    parsed: std.json.Parsed(Value),

    pub fn parse(text: []const u8) hook.Error!Config {
        const blank = std.mem.trim(u8, text, " \t\r\n").len == 0;
        const p = std.json.parseFromSlice(Value, alloc, if (blank) "{}" else text, .{}) catch |e|
            return hook.fail(error.InvalidConfig, "configuration is not JSON: {s}", .{@errorName(e)});
        return .{ .parsed = p };
    }

    pub fn deinit(self: *Config) void {
        self.parsed.deinit();
    }

    pub fn root(self: *const Config) Value {
        return self.parsed.value;
    }

    fn get(self: *const Config, key: []const u8) ?Value {
        return switch (self.parsed.value) {
            .object => |o| o.get(key),
            else => null,
        };
    }

    /// The configuration is an object with only `allowed` fields.
    pub fn fields(self: *const Config, allowed: []const []const u8) hook.Error!void {
        const o = switch (self.parsed.value) {
            .object => |o| o,
            else => |v| return hook.fail(error.InvalidConfig, "configuration: expected an object, got {s}", .{kind(v)}),
        };
        var it = o.iterator();
        while (it.next()) |e| {
            for (allowed) |a| {
                if (std.mem.eql(u8, a, e.key_ptr.*)) break;
            } else return hook.fail(error.InvalidConfig, "unknown field `{s}`", .{e.key_ptr.*});
        }
    }

    pub fn has(self: *const Config, key: []const u8) bool {
        return self.get(key) != null;
    }

    pub fn float(self: *const Config, key: []const u8, required: bool, default: f32) hook.Error!f32 {
        const v = self.get(key) orelse {
            if (required) return hook.fail(error.InvalidConfig, "missing field `{s}`", .{key});
            return default;
        };
        return toF32(v) orelse hook.fail(error.InvalidConfig, "`{s}`: expected a number, got {s}", .{ key, kind(v) });
    }

    pub fn boolean(self: *const Config, key: []const u8, default: bool) hook.Error!bool {
        const v = self.get(key) orelse return default;
        return switch (v) {
            .bool => |b| b,
            else => hook.fail(error.InvalidConfig, "`{s}`: expected a boolean, got {s}", .{ key, kind(v) }),
        };
    }

    /// The string (valid while the Config is), or `default`.
    pub fn string(self: *const Config, key: []const u8, default: []const u8) hook.Error![]const u8 {
        const v = self.get(key) orelse return default;
        return switch (v) {
            .string => |s| s,
            else => hook.fail(error.InvalidConfig, "`{s}`: expected a string, got {s}", .{ key, kind(v) }),
        };
    }

    /// A list of numbers as f32 (allocated with malloc's allocator; free
    /// with `std.heap.c_allocator.free`), empty when missing unless required.
    pub fn floats(self: *const Config, key: []const u8, required: bool) hook.Error![]f32 {
        const v = self.get(key) orelse {
            if (required) return hook.fail(error.InvalidConfig, "missing field `{s}`", .{key});
            return &.{};
        };
        const arr = switch (v) {
            .array => |a| a,
            else => return hook.fail(error.InvalidConfig, "`{s}`: expected a list of numbers", .{key}),
        };
        const out = alloc.alloc(f32, arr.items.len) catch return hook.fail(error.Failed, "out of memory", .{});
        for (arr.items, 0..) |x, i| {
            out[i] = toF32(x) orelse {
                alloc.free(out);
                return hook.fail(error.InvalidConfig, "`{s}`: expected a list of numbers", .{key});
            };
        }
        return out;
    }

    /// A list of integers (free with `std.heap.c_allocator.free`).
    pub fn ints(self: *const Config, key: []const u8) hook.Error![]i64 {
        const v = self.get(key) orelse return &.{};
        const arr = switch (v) {
            .array => |a| a,
            else => return hook.fail(error.InvalidConfig, "`{s}`: expected a list of integers", .{key}),
        };
        const out = alloc.alloc(i64, arr.items.len) catch return hook.fail(error.Failed, "out of memory", .{});
        for (arr.items, 0..) |x, i| {
            out[i] = switch (x) {
                .integer => |n| n,
                else => {
                    alloc.free(out);
                    return hook.fail(error.InvalidConfig, "`{s}`: expected a list of integers", .{key});
                },
            };
        }
        return out;
    }

    /// A slice as written in a configuration: a list, one entry per leading
    /// dimension, each null, an integer, [start, stop] or [start, stop,
    /// step]; missing: the whole tensor.
    pub fn slice(self: *const Config, key: []const u8) hook.Error!hook.Slice {
        var s = hook.Slice{};
        const v = self.get(key) orelse return s;
        const arr = switch (v) {
            .array => |a| a,
            else => return hook.fail(error.InvalidConfig, "slice: expected a list, got {s}", .{kind(v)}),
        };
        if (arr.items.len > hook.max_dims) return hook.fail(error.InvalidConfig, "slice: more than {d} dimensions", .{hook.max_dims});
        for (arr.items, 0..) |d, i| {
            s.dims[i] = switch (d) {
                .null => .{},
                .integer => |n| hook.Dim.index(n),
                .array => |r| blk: {
                    if (r.items.len != 2 and r.items.len != 3)
                        return hook.fail(error.InvalidConfig, "slice entry {d} must be null, an integer, [start, stop] or [start, stop, step]", .{i});
                    var b = [3]?i64{ null, null, null };
                    for (r.items, 0..) |x, k| {
                        b[k] = switch (x) {
                            .null => null,
                            .integer => |n| n,
                            else => return hook.fail(error.InvalidConfig, "slice entry {d}: bounds must be integers or null", .{i}),
                        };
                    }
                    const step = b[2] orelse 1;
                    if (step < 1) return hook.fail(error.InvalidConfig, "slice step {d} must be >= 1", .{step});
                    break :blk .{ .start = b[0] orelse 0, .stop = b[1], .step = @intCast(step) };
                },
                else => return hook.fail(error.InvalidConfig, "slice entry {d} must be null, an integer, [start, stop] or [start, stop, step]", .{i}),
            };
        }
        s.len = arr.items.len;
        return s;
    }
};
