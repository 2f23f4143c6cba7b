//! `steer`: add `alpha * vector` to every position's last-dimension row
//! (activation steering / activation addition).
//!
//! Config: `{"vector": [..d_model floats..], "alpha": 4.0, "positions": [-1]}`;
//! `alpha` defaults to 1, `positions` (token positions on axis 1, negative
//! from the end) to all. `normalize: true` scales the vector to unit norm first.
//! `new_tokens_only: true` steers only the tokens generation adds (steps after
//! the prompt), leaving the prompt's pass untouched.

use flexmodel_hook_sdk::prelude::*;

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    vector: Vec<f32>,
    #[serde(default = "one")]
    alpha: f32,
    #[serde(default)]
    positions: Vec<i64>,
    #[serde(default)]
    normalize: bool,
    #[serde(default)]
    new_tokens_only: bool,
}

fn one() -> f32 {
    1.0
}

struct Steer(Config);

impl HookFunction for Steer {
    fn info() -> Info {
        Info::new(
            "steer",
            "0.1.0",
            "Add a scaled steering vector to the residual stream",
        )
        .edits()
        .hook_point("blocks.*.hook_resid_*")
    }

    fn init(config: &str) -> Result<Self> {
        let mut c: Config = parse_config(config)?;
        if c.vector.is_empty() {
            return Err(Error::config("`vector` must not be empty"));
        }
        if c.vector.iter().any(|v| !v.is_finite()) || !c.alpha.is_finite() {
            return Err(Error::config("`vector` and `alpha` must be finite"));
        }
        if c.normalize {
            let n = c.vector.iter().map(|v| v * v).sum::<f32>().sqrt();
            if n == 0.0 {
                return Err(Error::config("cannot normalize a zero vector"));
            }
            c.vector.iter_mut().for_each(|v| *v /= n);
        }
        Ok(Steer(c))
    }

    fn access(&self) -> Access {
        Access::edits()
    }

    fn forward(&mut self, ctx: &Context, act: &mut Activation<'_>) -> Result<()> {
        if self.0.new_tokens_only && !ctx.generation.is_some_and(|g| g.step > 0) {
            return Ok(());
        }
        let d = *ctx.shape.last().unwrap_or(&0);
        if d != self.0.vector.len() {
            return Err(Error::InvalidArgument(format!(
                "steering vector has {} elements but {} has last dimension {d}",
                self.0.vector.len(),
                ctx.hook_point
            )));
        }
        if self.0.positions.is_empty() {
            return act.add_vector(&Slice::all(), &self.0.vector, self.0.alpha);
        }
        for &p in &self.0.positions {
            act.add_vector(&Slice::token(p), &self.0.vector, self.0.alpha)?;
        }
        Ok(())
    }
}

export_hook!(Steer);
