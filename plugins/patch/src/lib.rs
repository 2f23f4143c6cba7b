//! `patch`: activation patching across runs. The first forward this
//! registration sees is the *clean* run: its activation is recorded in the
//! plugin's state. Every later forward (a *corrupted* run) gets clean values
//! written in at some token positions:
//!
//! - `{"positions": "sweep"}` (default): the k-th later forward patches
//!   position k (0, 1, 2, ...), so running the corrupted prompt once per
//!   position gives the usual patching table;
//! - `{"positions": [3, -1]}`: every later forward patches these positions.
//!
//! Positions are on axis 1 (`[batch, pos, ...]` activations); the clean and
//! corrupted prompts must have the same shape. The sweep index is emitted as
//! `<point>:patched_position` so results can be matched to positions.

use flexmodel_hook_sdk::prelude::*;
use flexmodel_hook_sdk::state;

#[derive(serde::Deserialize, Default)]
#[serde(untagged)]
enum Positions {
    #[default]
    #[serde(skip)]
    Sweep,
    Named(String),
    List(Vec<i64>),
}

#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default)]
    positions: Positions,
}

struct Patch {
    fixed: Option<Vec<i64>>,
}

const CLEAN: &str = "clean";
const SHAPE: &str = "clean_shape";
const NEXT: &str = "next_position";

fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

impl HookFunction for Patch {
    fn info() -> Info {
        Info::new(
            "patch",
            "0.1.0",
            "Record a clean run's activation, patch it into later runs position by position",
        )
        .edits()
    }

    fn init(config: &str) -> Result<Self> {
        let c: Config = parse_config(config)?;
        let fixed = match c.positions {
            Positions::Sweep => None,
            Positions::Named(s) if s == "sweep" => None,
            Positions::Named(s) => {
                return Err(Error::config(format!(
                    "positions must be \"sweep\" or a list of integers, got {s:?}"
                )));
            }
            Positions::List(v) if v.is_empty() => {
                return Err(Error::config("positions must not be empty"));
            }
            Positions::List(v) => Some(v),
        };
        Ok(Patch { fixed })
    }

    fn access(&self) -> Access {
        Access::edits()
    }

    fn forward(&mut self, ctx: &Context, act: &mut Activation<'_>) -> Result<()> {
        if ctx.dtype != DType::F32 {
            return Err(Error::Unsupported("patch works on f32 activations".into()));
        }
        let Some(clean) = state::get(CLEAN) else {
            // The clean run: remember it.
            let bytes = act.read_bytes(0, act.numel())?;
            state::set(CLEAN, &bytes)?;
            return state::set_json(SHAPE, &ctx.shape);
        };
        let shape: Vec<usize> = state::get_json(SHAPE)?.unwrap_or_default();
        if shape != ctx.shape {
            return Err(Error::InvalidArgument(format!(
                "clean run had shape {shape:?}, this run {:?}: patch runs of equal shape",
                ctx.shape
            )));
        }
        if shape.len() < 2 {
            return Err(Error::InvalidArgument(
                "activation has no position axis".into(),
            ));
        }
        let positions = match &self.fixed {
            Some(p) => p.clone(),
            None => {
                let k: i64 = state::get_json(NEXT)?.unwrap_or(0);
                if k >= shape[1] as i64 {
                    return Err(Error::InvalidArgument(format!(
                        "the sweep is done: all {} positions were patched",
                        shape[1]
                    )));
                }
                state::set_json(NEXT, &(k + 1))?;
                emit("patched_position", &[1], &[k as f32])?;
                vec![k]
            }
        };
        let clean = f32s(&clean);
        let (b, s) = (shape[0], shape[1]);
        let inner: usize = shape[2..].iter().product();
        for &p in &positions {
            let pos = if p < 0 { p + s as i64 } else { p };
            if pos < 0 || pos >= s as i64 {
                return Err(Error::InvalidArgument(format!(
                    "position {p} outside {s} tokens"
                )));
            }
            let pos = pos as usize;
            // Row-major [b, s, inner]: each batch row's `inner` values at `pos`.
            let mut values = Vec::with_capacity(b * inner);
            for row in 0..b {
                let at = (row * s + pos) * inner;
                values.extend_from_slice(&clean[at..at + inner]);
            }
            act.write_slice(&Slice::token(pos as i64), &values)?;
        }
        Ok(())
    }
}

export_hook!(Patch);
