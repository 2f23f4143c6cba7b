//! Conformance and cost guest, written once per language (this Rust one is
//! the reference; `conform-c`, `conform-py`, ... do the same, bit for bit).
//! `{"mode": ...}`:
//! - `state`: a counter kept in plugin state across forwards, emitted as
//!   `count` (`[1]`);
//! - `random`: `uniform` and `normal` (`[8]` each) and `u64` (one draw as
//!   four 16-bit pieces, `[4]`) from the host-seeded stream;
//! - `fail`: fill the activation with 7, then return `failed`;
//! - `trap`: fill it with 7, then trap (abort);
//! - `spin`: fill it with 7, then loop until the fuel runs out;
//! - `empty`: nothing (the cost of a call);
//! - `read`: read the whole activation into guest memory (one `read-bytes`);
//! - `norm`: the L2 norm of every last-dimension row, computed in the guest
//!   (f64 sums in order, each square exact), emitted as `norm` (`[rows]`);
//! - `scale`: multiply the whole activation by `factor` (a host bulk op).

use flexmodel_hook_sdk::prelude::*;

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    mode: String,
    #[serde(default = "one")]
    factor: f32,
}

fn one() -> f32 {
    1.0
}

struct Conform(Config);

impl HookFunction for Conform {
    fn info() -> Info {
        Info::new("conform", "0.1.0", "Conformance and cost guest").edits()
    }

    fn init(config: &str) -> Result<Self> {
        let c: Config = parse_config(config)?;
        const MODES: [&str; 9] = [
            "state", "random", "fail", "trap", "spin", "empty", "read", "norm", "scale",
        ];
        if !MODES.contains(&c.mode.as_str()) {
            return Err(Error::config(format!("unknown mode {:?}", c.mode)));
        }
        Ok(Conform(c))
    }

    fn access(&self) -> Access {
        match self.0.mode.as_str() {
            "fail" | "trap" | "spin" | "scale" => Access::edits(),
            _ => Access::read_only(),
        }
    }

    fn forward(&mut self, _ctx: &Context, act: &mut Activation<'_>) -> Result<()> {
        match self.0.mode.as_str() {
            "state" => {
                let n = match state::get("count") {
                    Some(b) if b.len() == 8 => u64::from_le_bytes(b.try_into().unwrap_or([0; 8])),
                    _ => 0,
                } + 1;
                state::set("count", &n.to_le_bytes())?;
                emit("count", &[1], &[n as f32])
            }
            "random" => {
                emit("uniform", &[8], &random::uniform(8))?;
                emit("normal", &[8], &random::normal(8))?;
                let u = random::next_u64();
                let parts: Vec<f32> = (0..4).map(|i| ((u >> (16 * i)) & 0xffff) as f32).collect();
                emit("u64", &[4], &parts)
            }
            "fail" => {
                act.fill(&Slice::all(), 7.0)?;
                Err(Error::failed("failed on purpose"))
            }
            "trap" => {
                act.fill(&Slice::all(), 7.0)?;
                std::process::abort()
            }
            "spin" => {
                act.fill(&Slice::all(), 7.0)?;
                let mut x: u64 = 1;
                loop {
                    x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
                }
            }
            "empty" => Ok(()),
            "read" => {
                let b = act.read_bytes(0, act.numel())?;
                std::hint::black_box(&b);
                Ok(())
            }
            "norm" => {
                let d = act.shape().last().copied().unwrap_or(1).max(1);
                let b = act.read_bytes(0, act.numel())?;
                let rows = b.len() / 4 / d;
                let mut out = Vec::with_capacity(rows);
                for r in 0..rows {
                    let mut s = 0f64;
                    for c in 0..d {
                        let i = (r * d + c) * 4;
                        let v = f32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]) as f64;
                        s += v * v;
                    }
                    out.push(s.sqrt() as f32);
                }
                emit("norm", &[rows], &out)
            }
            "scale" => act.scale(&Slice::all(), self.0.factor),
            m => Err(Error::config(format!("unknown mode {m:?}"))),
        }
    }
}

export_hook!(Conform);
