// `retrieve` in JavaScript: emit the activation, or a slice of it, into the
// output dictionary (the host copies it; nothing crosses the sandbox). The
// same configuration as the Rust plugin (plugins/retrieve):
// {"slice": [null, -1], "name": "last", "padding": "drop"|"keep"}, all
// optional; in a padded batch "drop" (the default) keeps real tokens only.
import { Access, ConfigError, Hook, exportHook } from "../../hook-sdk/js/flexmodel-hook.js";
/** @typedef {import("../../hook-sdk/js/flexmodel-hook.js").Config} Config */
/** @typedef {import("../../hook-sdk/js/flexmodel-hook.js").Context} Context */
/** @typedef {import("../../hook-sdk/js/flexmodel-hook.js").Activation} Activation */

class Retrieve extends Hook {
  static info = {
    name: "retrieve-js",
    version: "0.2.0",
    description: "Save the activation (or a slice of it) to the output dictionary",
  };

  /** @param {Config} config */
  init(config) {
    config.fields("slice", "name", "padding");
    this.slice = config.slice("slice");
    this.name = config.str("name", "");
    const padding = config.str("padding", "drop");
    if (padding !== "drop" && padding !== "keep")
      throw new ConfigError(`\`padding\`: expected "drop" or "keep", got "${padding}"`);
    this.keep = padding === "keep";
    return Access.readOnly(this.slice);
  }

  /** @param {Context} ctx @param {Activation} act */
  forward(ctx, act) {
    if (ctx.realTokens !== undefined && ctx.tokenDim !== undefined && !this.keep) act.emitReal(this.name, this.slice);
    else act.emit(this.name, this.slice);
  }
}

export const plugin = exportHook(Retrieve);
