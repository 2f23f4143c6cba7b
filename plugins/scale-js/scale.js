// `scale` in JavaScript: multiply the activation, or a slice of it, by a
// factor. The same configuration as the Rust plugin (plugins/scale):
// {"factor": 2.0, "slice": [null, -1]} (`slice` optional).
import { Access, ConfigError, Hook, exportHook } from "../../hook-sdk/js/flexmodel-hook.js";

class Scale extends Hook {
  static info = {
    name: "scale-js",
    version: "0.1.0",
    description: "Multiply the activation, or a slice of it, by a factor",
    edits: true,
  };

  init(config) {
    config.fields("factor", "slice");
    this.factor = config.f32("factor", { required: true });
    this.slice = config.slice("slice");
    if (!Number.isFinite(this.factor)) throw new ConfigError("factor must be finite");
    return Access.edits();
  }

  forward(ctx, act) {
    act.scale(this.slice, this.factor);
  }
}

export const plugin = exportHook(Scale);
