// FlexModel HookFunctions in JavaScript (componentize-js): a thin layer over
// the bindings componentize-js generates from wit/ (the `flexmodel:hook/*`
// imports, never edited), with the concepts of the Rust SDK. A hook is a
// class with `info`, `init(config)` returning its access, and
// `forward(ctx, act)`; `exportHook` makes the world's `plugin` export:
//
//     import { Access, Hook, exportHook } from "../../hook-sdk/js/flexmodel-hook.js";
//     class Scale extends Hook {
//       static info = { name: "scale-js", version: "0.1.0", description: "...", edits: true };
//       init(config) { config.fields("factor", "slice"); this.factor = config.f32("factor", { required: true });
//                      this.slice = config.slice("slice"); return Access.edits(); }
//       forward(ctx, act) { act.scale(this.slice, this.factor); }
//     }
//     export const plugin = exportHook(Scale);
//
// Reads arrive as Float32Array (f32 activations through `read-bytes`), edits
// are host-side bulk ops, errors are exceptions (ConfigError, ArgumentError,
// Unsupported, LimitExceeded, Failed; a host call's error throws the same).
// Types: flexmodel-hook.d.ts. Build: docs/hooks/javascript.md.

import * as gen from "flexmodel:hook/generation@0.1.2";
import * as logs from "flexmodel:hook/log@0.1.2";
import * as output from "flexmodel:hook/output@0.1.2";
import * as pass from "flexmodel:hook/pass@0.1.2";
import * as rnd from "flexmodel:hook/random@0.1.2";
import * as st from "flexmodel:hook/state@0.1.2";
import * as tokens from "flexmodel:hook/tokens@0.1.2";

// ------------------------------------------------------------------ errors

/** A hook error; the subclass names the `hook-error` variant. */
export class HookError extends Error {
  constructor(message, tag = "failed") {
    super(message);
    // What componentize-js sends as the `err` of a result.
    Object.defineProperty(this, "payload", { value: { tag, val: String(message) } });
  }
}
export class ConfigError extends HookError {
  constructor(m) { super(m, "invalid-config"); }
}
export class ArgumentError extends HookError {
  constructor(m) { super(m, "invalid-argument"); }
}
export class Unsupported extends HookError {
  constructor(m) { super(m, "unsupported"); }
}
export class LimitExceeded extends HookError {
  constructor(m) { super(m, "limit-exceeded"); }
}
export class Failed extends HookError {
  constructor(m) { super(m, "failed"); }
}

const BY_TAG = {
  "invalid-config": ConfigError,
  "invalid-argument": ArgumentError,
  unsupported: Unsupported,
  "limit-exceeded": LimitExceeded,
  failed: Failed,
};

/** A host call; its `hook-error` becomes one of ours. */
function host(f) {
  try {
    return f();
  } catch (e) {
    const p = e && e.payload;
    if (p && typeof p === "object" && p.tag in BY_TAG) throw new BY_TAG[p.tag](p.val);
    throw e;
  }
}

// ------------------------------------------------------------------ slices

/** `x` rounded to the nearest f32 (for arithmetic that must match other languages). */
export const f32 = Math.fround;

/** One dimension: start (negative from the end), stop (undefined: to the end), step >= 1. */
export class Dim {
  constructor(start = 0, stop = undefined, step = 1) {
    this.start = start;
    this.stop = stop;
    this.step = step;
  }
  static index(i) {
    return new Dim(i, i === -1 ? undefined : i + 1, 1);
  }
}

/** One Dim per leading dimension, the rest whole. */
export class Slice {
  constructor(dims = []) {
    this.dims = dims;
  }
  static all() {
    return new Slice();
  }
  /** Token `pos` of every sequence of a [batch, seq, ...] point. */
  static token(pos) {
    return new Slice([new Dim(), Dim.index(pos)]);
  }
  static lastToken() {
    return Slice.token(-1);
  }
  toWit() {
    return this.dims.map((d) => ({
      start: BigInt(d.start),
      stop: d.stop === undefined || d.stop === null ? undefined : BigInt(d.stop),
      step: BigInt(d.step),
    }));
  }
}

const wit = (s) => (s ? s.toWit() : []);

// ------------------------------------------------------------------ config

/** A number written with a fraction or an exponent (so never an integer). */
class FloatLiteral {
  constructor(v) {
    this.value = v;
  }
}

const kind = (v) =>
  v === null ? "null"
  : typeof v === "boolean" ? "a boolean"
  : typeof v === "number" || v instanceof FloatLiteral ? "a number"
  : typeof v === "string" ? "a string"
  : Array.isArray(v) ? "an array"
  : "an object";

const num = (v) => (v instanceof FloatLiteral ? v.value : typeof v === "number" ? v : undefined);
const isInt = (v) => typeof v === "number" && Number.isSafeInteger(v);
const MISSING = Symbol("missing");

/**
 * The JSON configuration, checked as the Rust SDK's serde derive checks it:
 * an object, no unknown field, each field of its type (null is a wrong
 * type), defaults for missing fields; each failure a ConfigError.
 */
export class Config {
  constructor(text) {
    const t = text && text.trim() ? text : "{}";
    try {
      // Tell 1.0 from 1 where the engine gives the source text.
      this.raw = JSON.parse(t, (k, v, ctx) =>
        typeof v === "number" && ctx && typeof ctx.source === "string" && /[.eE]/.test(ctx.source)
          ? new FloatLiteral(v)
          : v,
      );
    } catch (e) {
      throw new ConfigError(`configuration is not JSON: ${e.message}`);
    }
  }
  get(key) {
    const o = this.raw;
    return o !== null && typeof o === "object" && !Array.isArray(o) && !(o instanceof FloatLiteral) &&
      Object.prototype.hasOwnProperty.call(o, key) ? o[key] : MISSING;
  }
  has(key) {
    return this.get(key) !== MISSING;
  }
  /** The configuration is an object with only these fields. */
  fields(...allowed) {
    const o = this.raw;
    if (o === null || typeof o !== "object" || Array.isArray(o) || o instanceof FloatLiteral)
      throw new ConfigError(`configuration: expected an object, got ${kind(o)}`);
    for (const k of Object.keys(o)) if (!allowed.includes(k)) throw new ConfigError(`unknown field \`${k}\``);
  }
  f32(key, { required = false, default: dflt = 0 } = {}) {
    const v = this.get(key);
    if (v === MISSING) {
      if (required) throw new ConfigError(`missing field \`${key}\``);
      return Math.fround(dflt);
    }
    const n = num(v);
    if (n === undefined) throw new ConfigError(`\`${key}\`: expected a number, got ${kind(v)}`);
    return Math.fround(n);
  }
  bool(key, dflt = false) {
    const v = this.get(key);
    if (v === MISSING) return dflt;
    if (typeof v !== "boolean") throw new ConfigError(`\`${key}\`: expected a boolean, got ${kind(v)}`);
    return v;
  }
  str(key, dflt = "") {
    const v = this.get(key);
    if (v === MISSING) return dflt;
    if (typeof v !== "string") throw new ConfigError(`\`${key}\`: expected a string, got ${kind(v)}`);
    return v;
  }
  /** A list of numbers as a Float32Array. */
  f32List(key, { required = false } = {}) {
    const v = this.get(key);
    if (v === MISSING) {
      if (required) throw new ConfigError(`missing field \`${key}\``);
      return new Float32Array(0);
    }
    if (!Array.isArray(v) || v.some((x) => num(x) === undefined))
      throw new ConfigError(`\`${key}\`: expected a list of numbers`);
    return Float32Array.from(v, num);
  }
  intList(key) {
    const v = this.get(key);
    if (v === MISSING) return [];
    if (!Array.isArray(v) || !v.every(isInt)) throw new ConfigError(`\`${key}\`: expected a list of integers`);
    return v.slice();
  }
  /** A slice as written in a configuration (null, an integer, [start, stop] or [start, stop, step] per dimension). */
  slice(key = "slice") {
    const v = this.get(key);
    if (v === MISSING) return new Slice();
    if (!Array.isArray(v)) throw new ConfigError(`slice: expected a list, got ${kind(v)}`);
    return new Slice(
      v.map((d, i) => {
        if (d === null) return new Dim();
        if (isInt(d)) return Dim.index(d);
        if (Array.isArray(d) && (d.length === 2 || d.length === 3)) {
          if (!d.every((x) => x === null || isInt(x)))
            throw new ConfigError(`slice entry ${i}: bounds must be integers or null`);
          const step = d.length === 3 && d[2] !== null ? d[2] : 1;
          if (step < 1) throw new ConfigError(`slice step ${step} must be >= 1`);
          return new Dim(d[0] === null ? 0 : d[0], d[1] === null ? undefined : d[1], step);
        }
        throw new ConfigError(`slice entry ${i} must be null, an integer, [start, stop] or [start, stop, step]`);
      }),
    );
  }
}

// -------------------------------------------------------------- activation

/** The call's activation: a host tensor read and written by range. */
export class Activation {
  constructor(raw, shape, dtype) {
    this.raw = raw;
    this.shape = shape;
    this.dtype = dtype;
  }
  get numel() {
    return this.shape.reduce((a, b) => a * b, 1);
  }
  get writable() {
    return this.raw.writable();
  }
  /** `len` elements from flat element `offset`, as a Float32Array. */
  read(offset, len) {
    if (this.dtype === "f32") {
      const b = host(() => this.raw.readBytes(BigInt(offset), BigInt(len)));
      return new Float32Array(b.buffer, b.byteOffset, b.byteLength / 4);
    }
    return Float32Array.from(host(() => this.raw.read(BigInt(offset), BigInt(len))));
  }
  /** Raw little-endian bytes in the native dtype (a Uint8Array). */
  readBytes(offset, len) {
    return host(() => this.raw.readBytes(BigInt(offset), BigInt(len)));
  }
  readSlice(s) {
    return Float32Array.from(host(() => this.raw.readSlice(wit(s))));
  }
  write(offset, values) {
    const v = values instanceof Float32Array ? values : Float32Array.from(values);
    if (this.dtype === "f32") host(() => this.raw.writeBytes(BigInt(offset), new Uint8Array(v.buffer, v.byteOffset, v.byteLength)));
    else host(() => this.raw.write(BigInt(offset), v));
  }
  writeBytes(offset, bytes) {
    host(() => this.raw.writeBytes(BigInt(offset), bytes));
  }
  fill(s, value) {
    host(() => this.raw.fill(wit(s), value));
  }
  scale(s, factor) {
    host(() => this.raw.scale(wit(s), factor));
  }
  addVector(s, v, alpha) {
    host(() => this.raw.addVector(wit(s), v instanceof Float32Array ? v : Float32Array.from(v), alpha));
  }
  /** Emit a slice into the output dictionary ("" is the point's name). */
  emit(name, s) {
    host(() => output.emitActivation(name, this.raw, wit(s)));
  }
  /** Like emit, real tokens only: `s` applies to each row's real part. */
  emitReal(name, s) {
    host(() => tokens.emitReal(name, this.raw, wit(s)));
  }
}

// ------------------------------------------------------------ host helpers

/** Emit an f32 tensor. */
export function emit(name, shape, values) {
  const v = values instanceof Float32Array ? values : Float32Array.from(values);
  host(() => output.emit(name, BigUint64Array.from(shape.map(BigInt)), v));
}

export const state = {
  get: (key) => st.get(key),
  set: (key, value) => host(() => st.set(key, value)),
  remove: (key) => st.remove(key),
  keys: () => st.keys(),
};

export const log = {
  debug: (m) => logs.log("debug", m),
  info: (m) => logs.log("info", m),
  warn: (m) => logs.log("warn", m),
  error: (m) => logs.log("error", m),
};

export const random = {
  /** A BigInt. */
  nextU64: () => rnd.nextU64(),
  uniform: (n) => rnd.uniform(n),
  normal: (n) => rnd.normal(n),
};

// ------------------------------------------------------------------- hooks

/** How the hook edits and the only part it reads. */
export const Access = {
  readOnly: (reads) => ({ mode: "read-only", reads }),
  edits: () => ({ mode: "in-place" }),
  replaces: () => ({ mode: "replace" }),
};

/** Subclass it: `static info`, `init(config)`, `forward(ctx, act)`. */
export class Hook {
  init() {
    return Access.readOnly();
  }
  forward() {
    throw new Failed("forward is not implemented");
  }
}

function guard(f) {
  try {
    return f();
  } catch (e) {
    if (e instanceof HookError) throw e;
    throw new Failed(`${(e && e.name) || "Error"}: ${(e && e.message) || e}`);
  }
}

/** The `plugin` export for hook class `H`. */
export function exportHook(H) {
  let live = null;
  return {
    metadata() {
      const i = H.info;
      return {
        name: i.name,
        version: i.version,
        description: i.description,
        hookPoints: i.hookPoints || [],
        edits: !!i.edits,
      };
    },
    init(config) {
      return guard(() => {
        const h = new H();
        const a = h.init(new Config(config)) || Access.readOnly();
        live = h;
        return { mode: a.mode, reads: a.reads ? a.reads.toWit() : undefined };
      });
    },
    onForward(ctx, act) {
      if (!live) throw new Failed("hook called before init");
      const g = gen.current();
      const spans = tokens.realTokens();
      const dim = tokens.tokenDim();
      const shape = Array.from(ctx.shape, Number);
      const c = {
        hookPoint: ctx.hookPoint,
        shape,
        dtype: ctx.dtype,
        rank: ctx.rank,
        forwardIndex: Number(ctx.forwardIndex),
        generation: g ? { step: Number(g.step), position: Number(g.position) } : undefined,
        backward: pass.currentDirection() === "backward",
        tokenDim: dim,
        realTokens: spans ? spans.map((s) => ({ start: s.start, len: s.len })) : undefined,
      };
      guard(() => live.forward(c, new Activation(act, shape, ctx.dtype)));
    },
  };
}
