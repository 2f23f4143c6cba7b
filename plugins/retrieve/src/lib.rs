//! `retrieve`: emit the activation, or a configured slice of it, into the
//! output dictionary. The host copies the slice directly (nothing crosses the
//! sandbox boundary), and the declared read slice lets a distributed host
//! gather only that part.
//!
//! Config: `{"slice": [null, -1], "name": "last", "padding": "drop"}`, all
//! optional (`slice` format: `flexmodel_hook_sdk::SliceSpec`; `name` empty:
//! the tensor is stored under the hook point's own name).
//!
//! In a padded batch (prompts of different lengths), `padding` `"drop"` (the
//! default) keeps only real tokens: the slice applies to each row's real
//! tokens as to a batch of one (`[null, -1]` is each prompt's last token)
//! and the output is `[tokens, ...]`, the prompts' tokens one after the
//! other; `"keep"` saves the padded activation as it is. An unpadded batch
//! is saved as it is either way.

use flexmodel_hook_sdk::SliceSpec;
use flexmodel_hook_sdk::prelude::*;

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default)]
    slice: SliceSpec,
    #[serde(default)]
    name: String,
    #[serde(default)]
    padding: Pad,
}

#[derive(serde::Deserialize, Default, Clone, Copy, PartialEq)]
#[serde(rename_all = "lowercase")]
enum Pad {
    #[default]
    Drop,
    Keep,
}

struct Retrieve {
    slice: Slice,
    name: String,
    padding: Pad,
}

impl HookFunction for Retrieve {
    fn info() -> Info {
        Info::new(
            "retrieve",
            "0.2.0",
            "Save the activation (or a slice of it) to the output dictionary",
        )
    }

    fn init(config: &str) -> Result<Self> {
        let c: Config = parse_config(config)?;
        Ok(Retrieve {
            slice: c.slice.to_slice()?,
            name: c.name,
            padding: c.padding,
        })
    }

    fn access(&self) -> Access {
        Access::read_only().reads(self.slice.clone())
    }

    fn forward(&mut self, ctx: &Context, act: &mut Activation<'_>) -> Result<()> {
        let padded = ctx.real_tokens.is_some() && ctx.token_dim.is_some();
        if padded && self.padding == Pad::Drop {
            act.emit_real(&self.name, &self.slice)
        } else {
            act.emit(&self.name, &self.slice)
        }
    }
}

export_hook!(Retrieve);
