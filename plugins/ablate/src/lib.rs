//! `ablate`: zero chosen neurons (indices of the last dimension) or attention
//! heads, optionally only at chosen token positions.
//!
//! Config (at least one of `neurons` / `heads`):
//! - `neurons`: `[i, ...]` indices into the last dimension;
//! - `heads`: `[h, ...]` head indices. For a rank-4 activation laid out
//!   `[batch, pos, head, d_head]` (TransformerLens `hook_z`, `hook_q`, ...) the
//!   head axis is 2; for a rank-3 `[batch, pos, n_heads * d_head]` activation
//!   give `num_heads` and the last dimension is split into that many heads.
//!   `head_axis` overrides the axis;
//! - `positions`: `[p, ...]` token positions (axis 1; negative from the end),
//!   default all;
//! - `value`: what to write instead of 0 (default 0.0).

use flexmodel_hook_sdk::prelude::*;

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default)]
    neurons: Vec<i64>,
    #[serde(default)]
    heads: Vec<i64>,
    num_heads: Option<usize>,
    head_axis: Option<usize>,
    #[serde(default)]
    positions: Vec<i64>,
    #[serde(default)]
    value: f32,
}

struct Ablate(Config);

impl Ablate {
    /// Slices to fill for a tensor of `shape`.
    fn slices(&self, shape: &[usize]) -> Result<Vec<Slice>> {
        let c = &self.0;
        let rank = shape.len();
        let positions: Vec<Dim> = if c.positions.is_empty() {
            vec![Dim::ALL]
        } else {
            if rank < 2 {
                return Err(Error::unsupported(format!(
                    "positions need a [batch, pos, ...] activation, got shape {shape:?}"
                )));
            }
            c.positions.iter().map(|&p| Dim::index(p)).collect()
        };
        let mut out = Vec::new();
        for pos in &positions {
            // Leading dims: batch whole, position as configured.
            let lead = |n: usize| -> Vec<Dim> {
                let mut d = vec![Dim::ALL; n];
                if n >= 2 {
                    d[1] = *pos;
                }
                d
            };
            for &i in &c.neurons {
                let mut d = lead(rank - 1);
                d.push(Dim::index(i));
                out.push(Slice::new(d));
            }
            if !c.heads.is_empty() {
                let axis = c.head_axis.unwrap_or(if rank == 4 { 2 } else { rank - 1 });
                if axis >= rank {
                    return Err(Error::unsupported(format!(
                        "head axis {axis} does not exist in shape {shape:?}"
                    )));
                }
                let split_last = axis == rank - 1;
                for &h in &c.heads {
                    let mut d = lead(axis);
                    if split_last {
                        let n = c.num_heads.ok_or_else(|| {
                            Error::config(format!("`num_heads` is needed to find heads in the last dimension of shape {shape:?}"))
                        })?;
                        let width = shape[axis];
                        if n == 0 || width % n != 0 {
                            return Err(Error::config(format!(
                                "last dimension {width} is not divisible by num_heads {n}"
                            )));
                        }
                        let hd = (width / n) as i64;
                        let h = if h < 0 { h + n as i64 } else { h };
                        if h < 0 || h >= n as i64 {
                            return Err(Error::InvalidArgument(format!(
                                "head {h} out of range for {n} heads"
                            )));
                        }
                        d.push(Dim::range(h * hd, (h + 1) * hd));
                    } else {
                        d.push(Dim::index(h));
                    }
                    out.push(Slice::new(d));
                }
            }
        }
        Ok(out)
    }
}

impl HookFunction for Ablate {
    fn info() -> Info {
        Info::new("ablate", "0.1.0", "Zero chosen neurons or attention heads").edits()
    }

    fn init(config: &str) -> Result<Self> {
        let c: Config = parse_config(config)?;
        if c.neurons.is_empty() && c.heads.is_empty() {
            return Err(Error::config("give `neurons` and/or `heads` to ablate"));
        }
        Ok(Ablate(c))
    }

    fn access(&self) -> Access {
        Access::edits()
    }

    fn forward(&mut self, ctx: &Context, act: &mut Activation<'_>) -> Result<()> {
        for s in self.slices(&ctx.shape)? {
            act.fill(&s, self.0.value)?;
        }
        Ok(())
    }
}

export_hook!(Ablate);
