//! `retrieve`: emit the activation, or a configured slice of it, into the
//! output dictionary. The host copies the slice directly (nothing crosses the
//! sandbox boundary), and the declared read slice lets a distributed host
//! gather only that part.
//!
//! Config: `{"slice": [null, -1], "name": "last"}`, both optional
//! (`slice` format: `flexmodel_hook_sdk::SliceSpec`; `name` empty: the tensor
//! is stored under the hook point's own name).

use flexmodel_hook_sdk::SliceSpec;
use flexmodel_hook_sdk::prelude::*;

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default)]
    slice: SliceSpec,
    #[serde(default)]
    name: String,
}

struct Retrieve {
    slice: Slice,
    name: String,
}

impl HookFunction for Retrieve {
    fn info() -> Info {
        Info::new(
            "retrieve",
            "0.1.0",
            "Save the activation (or a slice of it) to the output dictionary",
        )
    }

    fn init(config: &str) -> Result<Self> {
        let c: Config = parse_config(config)?;
        Ok(Retrieve {
            slice: c.slice.to_slice()?,
            name: c.name,
        })
    }

    fn access(&self) -> Access {
        Access::read_only().reads(self.slice.clone())
    }

    fn forward(&mut self, _ctx: &Context, act: &mut Activation<'_>) -> Result<()> {
        act.emit(&self.name, &self.slice)
    }
}

export_hook!(Retrieve);
