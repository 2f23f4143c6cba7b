// The conformance and cost guest in JavaScript: what tests/guests/conform
// (Rust) does, bit for bit; see its modes there.
import { Access, ConfigError, Failed, Hook, Slice, emit, exportHook, random, state } from "../../../hook-sdk/js/flexmodel-hook.js";

const MODES = ["state", "random", "fail", "trap", "spin", "empty", "read", "norm", "scale"];

class Conform extends Hook {
  static info = { name: "conform", version: "0.1.0", description: "Conformance and cost guest", edits: true };

  init(config) {
    config.fields("mode", "factor");
    if (!config.has("mode")) throw new ConfigError("missing field `mode`");
    this.mode = config.str("mode");
    this.factor = config.f32("factor", { default: 1 });
    if (!MODES.includes(this.mode)) throw new ConfigError(`unknown mode "${this.mode}"`);
    return ["fail", "trap", "spin", "scale"].includes(this.mode) ? Access.edits() : Access.readOnly();
  }

  forward(ctx, act) {
    const m = this.mode;
    if (m === "state") {
      const b = state.get("count");
      let n = b !== undefined && b.length === 8 ? new DataView(b.buffer, b.byteOffset, 8).getBigUint64(0, true) : 0n;
      n += 1n;
      const out = new Uint8Array(8);
      new DataView(out.buffer).setBigUint64(0, n, true);
      state.set("count", out);
      emit("count", [1], [Number(n)]);
    } else if (m === "random") {
      emit("uniform", [8], random.uniform(8));
      emit("normal", [8], random.normal(8));
      const u = random.nextU64();
      emit("u64", [4], [0, 1, 2, 3].map((i) => Number((u >> BigInt(16 * i)) & 0xffffn)));
    } else if (m === "fail" || m === "trap" || m === "spin") {
      act.fill(Slice.all(), 7);
      if (m === "fail") throw new Failed("failed on purpose");
      // JavaScript cannot abort (tests/conformance.rs runs `spin` for it).
      if (m === "trap") throw new Failed("JavaScript has no abort");
      let x = 1;
      for (;;) x = (x * 1103515245 + 12345) % 2147483648;
    } else if (m === "empty") {
      // nothing
    } else if (m === "read") {
      act.readBytes(0, act.numel);
    } else if (m === "norm") {
      const d = Math.max(ctx.shape.length ? ctx.shape[ctx.shape.length - 1] : 1, 1);
      const v = act.read(0, act.numel);
      const rows = Math.floor(v.length / d);
      const out = new Float32Array(rows);
      for (let r = 0; r < rows; r++) {
        let s = 0;
        for (let c = r * d; c < (r + 1) * d; c++) s += v[c] * v[c];
        out[r] = Math.sqrt(s);
      }
      emit("norm", [rows], out);
    } else {
      act.scale(Slice.all(), this.factor);
    }
  }
}

export const plugin = exportHook(Conform);
