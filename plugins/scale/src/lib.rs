//! `scale`: multiply the activation (or a configured slice of it) by a factor.
//!
//! Config: `{"factor": 2.0, "slice": [[0, null], [-1]]}` (`slice` optional; see
//! `flexmodel_hook_sdk::SliceSpec` for the format).

use flexmodel_hook_sdk::SliceSpec;
use flexmodel_hook_sdk::prelude::*;

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    factor: f32,
    #[serde(default)]
    slice: SliceSpec,
}

struct Scale {
    factor: f32,
    slice: Slice,
}

impl HookFunction for Scale {
    fn info() -> Info {
        Info::new(
            "scale",
            "0.1.0",
            "Multiply the activation, or a slice of it, by a factor",
        )
        .edits()
    }

    fn init(config: &str) -> Result<Self> {
        let c: Config = parse_config(config)?;
        if !c.factor.is_finite() {
            return Err(Error::config("factor must be finite"));
        }
        Ok(Scale {
            factor: c.factor,
            slice: c.slice.to_slice()?,
        })
    }

    fn access(&self) -> Access {
        Access::edits()
    }

    fn forward(&mut self, _ctx: &Context, act: &mut Activation<'_>) -> Result<()> {
        act.scale(&self.slice, self.factor)
    }
}

export_hook!(Scale);
