//! FlexModel HookFunctions in Zig: a thin layer over the C bindings
//! wit-bindgen generates from wit/ (`hook_plugin.h`, never edited; imported
//! with @cImport), with the concepts of the Rust SDK. A hook is a file with
//!
//!     pub const info = hook.Info{ .name = "scale-zig", .version = "0.1.0", ... };
//!     pub fn init(config: *const hook.Config) hook.Error!hook.Access { ... }
//!     pub fn forward(ctx: *const hook.Context, act: hook.Activation) hook.Error!void { ... }
//!     comptime { hook.exportHook(@This()); }
//!
//! `exportHook` exports the world's `plugin` interface on top of them: the
//! JSON configuration parsed (std.json; an empty one is `{}`), errors with
//! their message (`hook.fail`) turned into the typed `hook-error`, what the
//! host frees after a call allocated with malloc, the borrowed activation
//! dropped when the call returns (the generated code does it). Buffers the
//! host hands back (`Floats`, `Bytes`) are the hook's: `deinit` them.
//!
//! Build: docs/hooks/zig.md (zig build-exe -target wasm32-wasi, then
//! `flexmodel-guest componentize`).

const std = @import("std");
pub const c = @cImport({
    @cInclude("hook_plugin.h");
});

/// The `hook-error` variants.
pub const Error = error{ InvalidConfig, InvalidArgument, Unsupported, LimitExceeded, Failed };

const alloc = std.heap.c_allocator;

var last_tag: u8 = 255;
var last_msg: ?[]u8 = null;

fn setError(kind: Error, msg: ?[]u8) void {
    if (last_msg) |m| alloc.free(m);
    last_tag = tag(kind);
    last_msg = msg;
}

/// Record the message of an error (formatted) and return it:
/// `return hook.fail(error.InvalidConfig, "factor must be finite", .{});`
pub fn fail(kind: Error, comptime fmt: []const u8, args: anytype) Error {
    setError(kind, std.fmt.allocPrint(alloc, fmt, args) catch null);
    return kind;
}

fn tag(kind: Error) u8 {
    return switch (kind) {
        error.InvalidConfig => 0,
        error.InvalidArgument => 1,
        error.Unsupported => 2,
        error.LimitExceeded => 3,
        error.Failed => 4,
    };
}

/// A host error becomes the pending error (its message taken over).
fn fromHost(e: *c.flexmodel_hook_types_hook_error_t) Error {
    const kinds = [_]Error{ error.InvalidConfig, error.InvalidArgument, error.Unsupported, error.LimitExceeded, error.Failed };
    const kind = kinds[@min(e.tag, 4)];
    const m = e.val.invalid_config;
    setError(kind, alloc.dupe(u8, m.ptr[0..m.len]) catch null);
    c.flexmodel_hook_types_hook_error_free(e);
    return kind;
}

/// The pending error as the export's `hook-error` (ownership handed over:
/// the generated post-return frees the message with free()).
fn toHost(kind: Error, err: *c.flexmodel_hook_types_hook_error_t) void {
    if (last_tag != tag(kind) or last_msg == null) setError(kind, alloc.dupe(u8, "failed without a message") catch null);
    const m = last_msg.?;
    const buf: [*]u8 = @ptrCast(std.c.malloc(@max(m.len, 1)) orelse return);
    @memcpy(buf[0..m.len], m);
    err.tag = tag(kind);
    err.val.invalid_config = .{ .ptr = buf, .len = m.len };
    last_msg = null;
    last_tag = 255;
}

/// One dimension of a slice, Python slice semantics (negative from the
/// end; `stop` null: to the end).
pub const Dim = struct {
    start: i64 = 0,
    stop: ?i64 = null,
    step: u64 = 1,

    pub fn index(i: i64) Dim {
        return .{ .start = i, .stop = if (i == -1) null else i + 1 };
    }
};

pub const max_dims = 8;

/// A strided slice: one Dim per leading dimension, the rest whole.
pub const Slice = struct {
    len: usize = 0,
    dims: [max_dims]Dim = undefined,

    pub fn all() Slice {
        return .{};
    }

    /// Token `pos` of every sequence of a `[batch, seq, ...]` activation.
    pub fn token(pos: i64) Slice {
        var s = Slice{ .len = 2 };
        s.dims[0] = .{};
        s.dims[1] = Dim.index(pos);
        return s;
    }

    fn lower(self: *const Slice, buf: *[max_dims]c.flexmodel_hook_types_dim_range_t) c.flexmodel_hook_types_slice_t {
        for (self.dims[0..self.len], 0..) |d, i| {
            buf[i] = .{ .start = d.start, .stop = .{ .is_some = d.stop != null, .val = d.stop orelse 0 }, .step = d.step };
        }
        return .{ .ptr = buf, .len = self.len };
    }
};

pub const Mode = enum(u8) { read_only = 0, in_place = 1, replace = 2 };

/// What `init` declares: how the hook edits, and the only part it reads.
pub const Access = struct {
    mode: Mode = .read_only,
    reads: ?Slice = null,
};

/// What the plugin says about itself.
pub const Info = struct {
    name: []const u8,
    version: []const u8,
    description: []const u8,
    hook_points: []const []const u8 = &.{},
    edits: bool = false,
};

pub const Dtype = enum(u8) { f32 = 0, f16 = 1, bf16 = 2 };

/// One batch row's real tokens along the token dimension.
pub const Span = extern struct { start: u32, len: u32 };

/// Where and when a hook is called (valid during the call).
pub const Context = struct {
    hook_point: []const u8,
    shape: []const u64,
    dtype: Dtype,
    rank: c.flexmodel_hook_types_rank_info_t,
    forward_index: u64,
    /// (step, position) while generating.
    generation: ?struct { step: u64, position: u64 },
    backward: bool,
    token_dim: ?u32,
    /// Each row's real tokens in a padded batch; null when all are real.
    real_tokens: ?[]const Span,
};

/// A buffer the host handed back (the hook's to free).
pub const Floats = struct {
    items: []f32,
    pub fn deinit(self: Floats) void {
        if (self.items.len > 0) std.c.free(self.items.ptr);
    }
};
pub const Bytes = struct {
    items: []u8,
    pub fn deinit(self: Bytes) void {
        if (self.items.len > 0) std.c.free(self.items.ptr);
    }
};

fn str(s: []const u8) c.hook_plugin_string_t {
    return .{ .ptr = @constCast(s.ptr), .len = s.len };
}

/// The call's activation (a borrowed host resource).
pub const Activation = struct {
    handle: c.flexmodel_hook_tensor_borrow_activation_t,

    pub fn numel(self: Activation) u64 {
        return c.flexmodel_hook_tensor_method_activation_numel(self.handle);
    }
    pub fn writable(self: Activation) bool {
        return c.flexmodel_hook_tensor_method_activation_writable(self.handle);
    }
    /// `len` elements from flat element `offset`, as f32.
    pub fn read(self: Activation, offset: u64, len: u64) Error!Floats {
        var l: c.hook_plugin_list_f32_t = undefined;
        var e: c.flexmodel_hook_types_hook_error_t = undefined;
        if (!c.flexmodel_hook_tensor_method_activation_read(self.handle, offset, len, &l, &e)) return fromHost(&e);
        return .{ .items = if (l.len == 0) &.{} else l.ptr[0..l.len] };
    }
    /// Raw little-endian bytes in the native dtype (the fastest read).
    pub fn readBytes(self: Activation, offset: u64, len: u64) Error!Bytes {
        var l: c.hook_plugin_list_u8_t = undefined;
        var e: c.flexmodel_hook_types_hook_error_t = undefined;
        if (!c.flexmodel_hook_tensor_method_activation_read_bytes(self.handle, offset, len, &l, &e)) return fromHost(&e);
        return .{ .items = if (l.len == 0) &.{} else l.ptr[0..l.len] };
    }
    pub fn readSlice(self: Activation, s: *const Slice) Error!Floats {
        var buf: [max_dims]c.flexmodel_hook_types_dim_range_t = undefined;
        var ws = s.lower(&buf);
        var l: c.hook_plugin_list_f32_t = undefined;
        var e: c.flexmodel_hook_types_hook_error_t = undefined;
        if (!c.flexmodel_hook_tensor_method_activation_read_slice(self.handle, &ws, &l, &e)) return fromHost(&e);
        return .{ .items = if (l.len == 0) &.{} else l.ptr[0..l.len] };
    }
    pub fn write(self: Activation, offset: u64, values: []const f32) Error!void {
        var l = c.hook_plugin_list_f32_t{ .ptr = @constCast(values.ptr), .len = values.len };
        var e: c.flexmodel_hook_types_hook_error_t = undefined;
        if (!c.flexmodel_hook_tensor_method_activation_write(self.handle, offset, &l, &e)) return fromHost(&e);
    }
    pub fn writeBytes(self: Activation, offset: u64, bytes: []const u8) Error!void {
        var l = c.hook_plugin_list_u8_t{ .ptr = @constCast(bytes.ptr), .len = bytes.len };
        var e: c.flexmodel_hook_types_hook_error_t = undefined;
        if (!c.flexmodel_hook_tensor_method_activation_write_bytes(self.handle, offset, &l, &e)) return fromHost(&e);
    }
    /// Host-side bulk operations: nothing crosses the sandbox boundary.
    pub fn fill(self: Activation, s: *const Slice, value: f32) Error!void {
        var buf: [max_dims]c.flexmodel_hook_types_dim_range_t = undefined;
        var ws = s.lower(&buf);
        var e: c.flexmodel_hook_types_hook_error_t = undefined;
        if (!c.flexmodel_hook_tensor_method_activation_fill(self.handle, &ws, value, &e)) return fromHost(&e);
    }
    pub fn scale(self: Activation, s: *const Slice, factor: f32) Error!void {
        var buf: [max_dims]c.flexmodel_hook_types_dim_range_t = undefined;
        var ws = s.lower(&buf);
        var e: c.flexmodel_hook_types_hook_error_t = undefined;
        if (!c.flexmodel_hook_tensor_method_activation_scale(self.handle, &ws, factor, &e)) return fromHost(&e);
    }
    pub fn addVector(self: Activation, s: *const Slice, v: []const f32, alpha: f32) Error!void {
        var buf: [max_dims]c.flexmodel_hook_types_dim_range_t = undefined;
        var ws = s.lower(&buf);
        var l = c.hook_plugin_list_f32_t{ .ptr = @constCast(v.ptr), .len = v.len };
        var e: c.flexmodel_hook_types_hook_error_t = undefined;
        if (!c.flexmodel_hook_tensor_method_activation_add_vector(self.handle, &ws, &l, alpha, &e)) return fromHost(&e);
    }
    /// Emit a slice into the output dictionary ("" is the point's name).
    pub fn emit(self: Activation, name: []const u8, s: *const Slice) Error!void {
        var buf: [max_dims]c.flexmodel_hook_types_dim_range_t = undefined;
        var ws = s.lower(&buf);
        var n = str(name);
        var e: c.flexmodel_hook_types_hook_error_t = undefined;
        if (!c.flexmodel_hook_output_emit_activation(&n, self.handle, &ws, &e)) return fromHost(&e);
    }
    /// Like `emit`, real tokens only (`s` applies to each row's real part).
    pub fn emitReal(self: Activation, name: []const u8, s: *const Slice) Error!void {
        var buf: [max_dims]c.flexmodel_hook_types_dim_range_t = undefined;
        var ws = s.lower(&buf);
        var n = str(name);
        var e: c.flexmodel_hook_types_hook_error_t = undefined;
        if (!c.flexmodel_hook_tokens_emit_real(&n, self.handle, &ws, &e)) return fromHost(&e);
    }
};

/// Emit an f32 tensor into the output dictionary.
pub fn emit(name: []const u8, shape: []const u64, values: []const f32) Error!void {
    var n = str(name);
    var sh = c.hook_plugin_list_u64_t{ .ptr = @constCast(shape.ptr), .len = shape.len };
    var v = c.hook_plugin_list_f32_t{ .ptr = @constCast(values.ptr), .len = values.len };
    var e: c.flexmodel_hook_types_hook_error_t = undefined;
    if (!c.flexmodel_hook_output_emit(&n, &sh, &v, &e)) return fromHost(&e);
}

/// State that outlives a call.
pub const state = struct {
    pub fn get(key: []const u8) ?Bytes {
        var k = str(key);
        var v: c.hook_plugin_list_u8_t = undefined;
        if (!c.flexmodel_hook_state_get(&k, &v)) return null;
        return .{ .items = if (v.len == 0) &.{} else v.ptr[0..v.len] };
    }
    pub fn set(key: []const u8, value: []const u8) Error!void {
        var k = str(key);
        var v = c.hook_plugin_list_u8_t{ .ptr = @constCast(value.ptr), .len = value.len };
        var e: c.flexmodel_hook_types_hook_error_t = undefined;
        if (!c.flexmodel_hook_state_set(&k, &v, &e)) return fromHost(&e);
    }
    pub fn remove(key: []const u8) void {
        var k = str(key);
        c.flexmodel_hook_state_remove(&k);
    }
};

pub const Level = enum(u8) { trace = 0, debug, info, warn, err };

/// A message for the user (formatted).
pub fn log(level: Level, comptime fmt: []const u8, args: anytype) void {
    const m = std.fmt.allocPrint(alloc, fmt, args) catch return;
    defer alloc.free(m);
    var s = str(m);
    c.flexmodel_hook_log_log(@intFromEnum(level), &s);
}

/// The host-seeded random stream (the same on every rank).
pub const random = struct {
    pub fn nextU64() u64 {
        return c.flexmodel_hook_random_next_u64();
    }
    pub fn uniform(n: u32) Floats {
        var l: c.hook_plugin_list_f32_t = undefined;
        c.flexmodel_hook_random_uniform(n, &l);
        return .{ .items = if (l.len == 0) &.{} else l.ptr[0..l.len] };
    }
    pub fn normal(n: u32) Floats {
        var l: c.hook_plugin_list_f32_t = undefined;
        c.flexmodel_hook_random_normal(n, &l);
        return .{ .items = if (l.len == 0) &.{} else l.ptr[0..l.len] };
    }
};

pub const Config = @import("config.zig").Config;

fn dupZ(s: []const u8) c.hook_plugin_string_t {
    const buf: [*]u8 = @ptrCast(std.c.malloc(@max(s.len, 1)) orelse return .{ .ptr = null, .len = 0 });
    @memcpy(buf[0..s.len], s);
    return .{ .ptr = buf, .len = s.len };
}

/// Export hook `H` (a file with `info`, `init`, `forward`) as the
/// component's `plugin` interface.
pub fn exportHook(comptime H: type) void {
    const W = struct {
        fn metadata(ret: *c.exports_flexmodel_hook_plugin_plugin_info_t) callconv(.c) void {
            const i: Info = H.info;
            ret.name = dupZ(i.name);
            ret.version = dupZ(i.version);
            ret.description = dupZ(i.description);
            ret.hook_points = .{ .ptr = null, .len = 0 };
            if (i.hook_points.len > 0) {
                const p: [*]c.hook_plugin_string_t = @ptrCast(@alignCast(std.c.malloc(i.hook_points.len * @sizeOf(c.hook_plugin_string_t)) orelse return));
                for (i.hook_points, 0..) |h, k| p[k] = dupZ(h);
                ret.hook_points = .{ .ptr = p, .len = i.hook_points.len };
            }
            ret.edits = i.edits;
        }

        fn init(config: *c.hook_plugin_string_t, ret: *c.exports_flexmodel_hook_plugin_access_t, err: *c.exports_flexmodel_hook_plugin_hook_error_t) callconv(.c) bool {
            const text = if (config.len == 0) "" else config.ptr[0..config.len];
            defer c.hook_plugin_string_free(config);
            var cfg = Config.parse(text) catch |e| {
                toHost(e, err);
                return false;
            };
            defer cfg.deinit();
            const a = H.init(&cfg) catch |e| {
                toHost(e, err);
                return false;
            };
            ret.mode = @intFromEnum(a.mode);
            ret.reads = .{ .is_some = a.reads != null, .val = .{ .ptr = null, .len = 0 } };
            if (a.reads) |r| {
                if (r.len > 0) {
                    const dims: [*]c.flexmodel_hook_types_dim_range_t = @ptrCast(@alignCast(std.c.malloc(r.len * @sizeOf(c.flexmodel_hook_types_dim_range_t)) orelse return false));
                    var buf: [max_dims]c.flexmodel_hook_types_dim_range_t = undefined;
                    const ws = r.lower(&buf);
                    @memcpy(dims[0..r.len], ws.ptr[0..r.len]);
                    ret.reads.val = .{ .ptr = dims, .len = r.len };
                }
            }
            return true;
        }

        fn onForward(ctx: *c.exports_flexmodel_hook_plugin_call_context_t, act: c.exports_flexmodel_hook_plugin_borrow_activation_t, err: *c.exports_flexmodel_hook_plugin_hook_error_t) callconv(.c) bool {
            defer c.exports_flexmodel_hook_plugin_call_context_free(ctx);
            var step: c.flexmodel_hook_generation_gen_step_t = undefined;
            const generating = c.flexmodel_hook_generation_current(&step);
            var dim: u32 = 0;
            const has_dim = c.flexmodel_hook_tokens_token_dim(&dim);
            var spans: c.flexmodel_hook_tokens_list_span_t = undefined;
            const padded = c.flexmodel_hook_tokens_real_tokens(&spans);
            defer if (padded) c.flexmodel_hook_tokens_list_span_free(&spans);
            const real: ?[]const Span = if (!padded) null else if (spans.len == 0) &.{} else @as([*]const Span, @ptrCast(spans.ptr))[0..spans.len];
            const cx = Context{
                .hook_point = if (ctx.hook_point.len == 0) "" else ctx.hook_point.ptr[0..ctx.hook_point.len],
                .shape = if (ctx.shape.len == 0) &.{} else ctx.shape.ptr[0..ctx.shape.len],
                .dtype = @enumFromInt(ctx.dtype),
                .rank = ctx.rank,
                .forward_index = ctx.forward_index,
                .generation = if (generating) .{ .step = step.step, .position = step.position } else null,
                .backward = c.flexmodel_hook_pass_current_direction() == c.FLEXMODEL_HOOK_PASS_DIRECTION_BACKWARD,
                .token_dim = if (has_dim) dim else null,
                .real_tokens = real,
            };
            H.forward(&cx, .{ .handle = act }) catch |e| {
                toHost(e, err);
                return false;
            };
            return true;
        }
    };
    @export(&W.metadata, .{ .name = "exports_flexmodel_hook_plugin_metadata" });
    @export(&W.init, .{ .name = "exports_flexmodel_hook_plugin_init" });
    @export(&W.onForward, .{ .name = "exports_flexmodel_hook_plugin_on_forward" });
}
