// `scale` in JavaScript: multiply the activation, or a slice of it, by a
// factor. The same configuration as the Rust plugin (plugins/scale):
// {"factor": 2.0, "slice": [null, -1]} (`slice` optional).
import { Access, ConfigError, Hook, exportHook } from "../../hook-sdk/js/flexmodel-hook.js";
/** @typedef {import("../../hook-sdk/js/flexmodel-hook.js").Config} Config */
/** @typedef {import("../../hook-sdk/js/flexmodel-hook.js").Context} Context */
/** @typedef {import("../../hook-sdk/js/flexmodel-hook.js").Activation} Activation */

class Scale extends Hook {
  static info = {
    name: "scale-js",
    version: "0.1.0",
    description: "Multiply the activation, or a slice of it, by a factor",
    edits: true,
  };

  /** @param {Config} config */
  init(config) {
    config.fields("factor", "slice");
    this.factor = config.f32("factor", { required: true });
    this.slice = config.slice("slice");
    if (!Number.isFinite(this.factor)) throw new ConfigError("factor must be finite");
    return Access.edits();
  }

  /** @param {Context} ctx @param {Activation} act */
  forward(ctx, act) {
    act.scale(this.slice, this.factor);
  }
}

export const plugin = exportHook(Scale);
