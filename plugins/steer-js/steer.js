// `steer` in JavaScript: add `alpha * vector` to every position's
// last-dimension row (activation addition). The same configuration as the
// Rust plugin (plugins/steer): {"vector": [...], "alpha": 4.0,
// "positions": [-1], "normalize": false, "new_tokens_only": false}.
// Arithmetic on the vector is rounded to f32 after every operation (`f32`),
// so a normalized vector is bit-identical to the Rust plugin's.
import { Access, ArgumentError, ConfigError, Hook, Slice, exportHook, f32 } from "../../hook-sdk/js/flexmodel-hook.js";
/** @typedef {import("../../hook-sdk/js/flexmodel-hook.js").Config} Config */
/** @typedef {import("../../hook-sdk/js/flexmodel-hook.js").Context} Context */
/** @typedef {import("../../hook-sdk/js/flexmodel-hook.js").Activation} Activation */

class Steer extends Hook {
  static info = {
    name: "steer-js",
    version: "0.1.0",
    description: "Add a scaled steering vector to the residual stream",
    hookPoints: ["blocks.*.hook_resid_*"],
    edits: true,
  };

  /** @param {Config} config */
  init(config) {
    config.fields("vector", "alpha", "positions", "normalize", "new_tokens_only");
    this.vector = config.f32List("vector", { required: true });
    this.alpha = config.f32("alpha", { default: 1 });
    this.positions = config.intList("positions");
    const normalize = config.bool("normalize");
    this.newTokensOnly = config.bool("new_tokens_only");
    if (this.vector.length === 0) throw new ConfigError("`vector` must not be empty");
    if (!this.vector.every(Number.isFinite) || !Number.isFinite(this.alpha))
      throw new ConfigError("`vector` and `alpha` must be finite");
    if (normalize) {
      let n = 0;
      for (const v of this.vector) n = f32(n + f32(v * v));
      n = f32(Math.sqrt(n));
      if (n === 0) throw new ConfigError("cannot normalize a zero vector");
      this.vector = this.vector.map((v) => f32(v / n));
    }
    return Access.edits();
  }

  /** @param {Context} ctx @param {Activation} act */
  forward(ctx, act) {
    if (this.newTokensOnly && !(ctx.generation && ctx.generation.step > 0)) return;
    const d = ctx.shape.length ? ctx.shape[ctx.shape.length - 1] : 0;
    if (d !== this.vector.length)
      throw new ArgumentError(
        `steering vector has ${this.vector.length} elements but ${ctx.hookPoint} has last dimension ${d}`,
      );
    if (this.positions.length === 0) {
      act.addVector(Slice.all(), this.vector, this.alpha);
      return;
    }
    for (const p of this.positions) act.addVector(Slice.token(p), this.vector, this.alpha);
  }
}

export const plugin = exportHook(Steer);
