// Types of the FlexModel hook SDK for JavaScript / TypeScript
// (flexmodel-hook.js). See docs/hooks/javascript.md.

/** A hook error; the subclass names the `hook-error` variant. */
export class HookError extends Error {
  constructor(message: string, tag?: string);
  readonly payload: { tag: string; val: string };
}
/** The configuration could not be used (`invalid-config`). */
export class ConfigError extends HookError { constructor(message: string); }
/** An argument was out of range or of the wrong length (`invalid-argument`). */
export class ArgumentError extends HookError { constructor(message: string); }
/** The activation's shape or dtype is not supported (`unsupported`). */
export class Unsupported extends HookError { constructor(message: string); }
/** A host limit was reached (`limit-exceeded`). */
export class LimitExceeded extends HookError { constructor(message: string); }
/** Any other failure (`failed`). */
export class Failed extends HookError { constructor(message: string); }

/** `x` rounded to the nearest f32 (Math.fround). */
export const f32: (x: number) => number;

/** One dimension: Python slice semantics (negative from the end; no stop: to the end). */
export class Dim {
  constructor(start?: number, stop?: number, step?: number);
  start: number;
  stop: number | undefined;
  step: number;
  static index(i: number): Dim;
}

/** One Dim per leading dimension, the rest whole. */
export class Slice {
  constructor(dims?: Dim[]);
  dims: Dim[];
  static all(): Slice;
  /** Token `pos` of every sequence of a [batch, seq, ...] point. */
  static token(pos: number): Slice;
  static lastToken(): Slice;
}

/** The JSON configuration, checked as the Rust SDK checks it. */
export class Config {
  constructor(text: string);
  /** The parsed JSON. */
  readonly raw: unknown;
  has(key: string): boolean;
  /** The configuration is an object with only these fields. */
  fields(...allowed: string[]): void;
  f32(key: string, opts?: { required?: boolean; default?: number }): number;
  bool(key: string, dflt?: boolean): boolean;
  str(key: string, dflt?: string): string;
  f32List(key: string, opts?: { required?: boolean }): Float32Array;
  intList(key: string): number[];
  slice(key?: string): Slice;
}

export type Dtype = "f32" | "f16" | "bf16";
export type EditMode = "read-only" | "in-place" | "replace";

/** How the hook edits, and the only part it reads (the host gathers no more). */
export interface AccessSpec {
  mode: EditMode;
  reads?: Slice;
}
export const Access: {
  readOnly(reads?: Slice): AccessSpec;
  edits(): AccessSpec;
  replaces(): AccessSpec;
};

export interface RankInfo {
  tpRank: number; tpSize: number; ppRank: number; ppSize: number;
  dpRank: number; dpSize: number; globalRank: number; worldSize: number;
}

/** Where and when the hook is called. */
export interface Context {
  hookPoint: string;
  shape: number[];
  dtype: Dtype;
  rank: RankInfo;
  forwardIndex: number;
  /** While generating: the step (0 = the prompt) and the pass's first position. */
  generation?: { step: number; position: number };
  /** A backward hook: the tensor is the gradient. */
  backward: boolean;
  tokenDim?: number;
  /** Each row's real tokens in a padded batch; undefined when all are real. */
  realTokens?: { start: number; len: number }[];
}

/** The call's activation: a host tensor read and written by range. */
export class Activation {
  readonly shape: number[];
  readonly dtype: Dtype;
  readonly numel: number;
  readonly writable: boolean;
  read(offset: number, len: number): Float32Array;
  readBytes(offset: number, len: number): Uint8Array;
  readSlice(s: Slice): Float32Array;
  write(offset: number, values: Float32Array | number[]): void;
  writeBytes(offset: number, bytes: Uint8Array): void;
  /** Host-side bulk operations: nothing crosses the sandbox boundary. */
  fill(s: Slice, value: number): void;
  scale(s: Slice, factor: number): void;
  addVector(s: Slice, v: Float32Array | number[], alpha: number): void;
  /** Emit a slice into the output dictionary ("" is the point's name). */
  emit(name: string, s?: Slice): void;
  /** Like emit, real tokens only. */
  emitReal(name: string, s?: Slice): void;
}

export function emit(name: string, shape: number[], values: Float32Array | number[]): void;
export const state: {
  get(key: string): Uint8Array | undefined;
  set(key: string, value: Uint8Array): void;
  remove(key: string): void;
  keys(): string[];
};
export const log: {
  debug(m: string): void; info(m: string): void; warn(m: string): void; error(m: string): void;
};
export const random: {
  nextU64(): bigint;
  uniform(n: number): Float32Array;
  normal(n: number): Float32Array;
};

export interface Info {
  name: string;
  version: string;
  description: string;
  hookPoints?: string[];
  edits?: boolean;
}

/** Subclass it: `static info`, `init(config)`, `forward(ctx, act)`. */
export class Hook {
  init(config: Config): AccessSpec;
  forward(ctx: Context, act: Activation): void;
}

/** The `plugin` export for a hook class. */
export function exportHook(H: { new (): Hook; info: Info }): unknown;
