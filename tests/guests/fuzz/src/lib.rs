//! Fuzzing guest: calls every host function with arguments drawn from a
//! seeded generator, extreme values included (`u64::MAX` lengths and shapes,
//! `i64::MIN` slice bounds, zero and huge steps, `..` names, control
//! characters, over-long keys), ignoring every error. Configuration:
//! `{"seed": S, "calls": N, "replace": false, "fail": true}`: `N` host calls
//! per forward call, in edit mode `replace` or in place; with `fail`, the
//! call returns an error when the generator says so (so both the commit and
//! the rollback paths run). Emits `fuzz:calls` = host calls made, when it
//! succeeds.

use flexmodel_hook_sdk::__private::flexmodel::hook::{
    generation, log as wlog, output as wout, pass, random as wrand, state as wstate,
};
use flexmodel_hook_sdk::__private::wit::{DimRange, Dtype};
use flexmodel_hook_sdk::prelude::*;

#[derive(serde::Deserialize)]
struct Config {
    seed: u64,
    calls: u64,
    #[serde(default)]
    replace: bool,
    #[serde(default = "yes")]
    fail: bool,
}

fn yes() -> bool {
    true
}

struct Fuzz {
    cfg: Config,
    round: u64,
}

/// SplitMix64.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    /// A u64 near the interesting edges or inside `0..=max`.
    fn u64_around(&mut self, max: u64) -> u64 {
        match self.below(8) {
            0 => 0,
            1 => u64::MAX,
            2 => max,
            3 => max.wrapping_add(1),
            4 => 1 << self.below(64),
            5 => i64::MAX as u64 + self.below(3),
            _ => self.below(max.saturating_add(2)),
        }
    }
    fn i64_around(&mut self, max: i64) -> i64 {
        match self.below(8) {
            0 => i64::MIN,
            1 => i64::MAX,
            2 => -(self.below(max as u64 + 2) as i64),
            3 => max,
            _ => self.below(max as u64 + 2) as i64,
        }
    }
    fn slice(&mut self, rank: usize, dim: i64) -> Vec<DimRange> {
        let n = self.below(rank as u64 + 3) as usize;
        (0..n)
            .map(|_| DimRange {
                start: self.i64_around(dim),
                stop: if self.below(3) == 0 {
                    None
                } else {
                    Some(self.i64_around(dim))
                },
                step: match self.below(6) {
                    0 => 0,
                    1 => u64::MAX,
                    2 => 1 + self.below(4),
                    _ => 1,
                },
            })
            .collect()
    }
    fn name(&mut self) -> String {
        const NAMES: [&str; 12] = [
            "",
            "a",
            "x/y",
            "../up",
            "a//b",
            "./.",
            "ok.name-1",
            "bad:colon",
            "spaces here",
            "\u{0}\u{1b}",
            "k",
            "/lead",
        ];
        match self.below(4) {
            0 => "n".repeat(self.below(300) as usize),
            1 => format!("f{}", self.below(50)),
            _ => NAMES[self.below(NAMES.len() as u64) as usize].to_string(),
        }
    }
    fn key(&mut self) -> String {
        match self.below(5) {
            0 => "k".repeat(self.below(600) as usize),
            _ => format!("s{}", self.below(40)),
        }
    }
    fn floats(&mut self, max: u64) -> Vec<f32> {
        let n = self.below(max + 2) as usize;
        (0..n)
            .map(|i| match self.below(10) {
                0 => f32::NAN,
                1 => f32::INFINITY,
                _ => i as f32 * 0.5,
            })
            .collect()
    }
    fn bytes(&mut self, max: u64) -> Vec<u8> {
        let n = self.below(max + 2) as usize;
        (0..n).map(|i| i as u8).collect()
    }
    fn shape(&mut self, numel: u64) -> Vec<u64> {
        match self.below(5) {
            0 => vec![u64::MAX, 0],
            1 => vec![numel],
            2 => (0..self.below(12)).map(|_| self.u64_around(8)).collect(),
            3 => vec![1, numel],
            _ => vec![numel.wrapping_add(1)],
        }
    }
}

impl HookFunction for Fuzz {
    fn info() -> Info {
        Info::new(
            "fuzz",
            "0.1.0",
            "Calls every host function with seeded arguments",
        )
        .edits()
    }

    fn init(config: &str) -> Result<Self> {
        Ok(Fuzz {
            cfg: parse_config(config)?,
            round: 0,
        })
    }

    fn access(&self) -> Access {
        if self.cfg.replace {
            Access::replaces()
        } else {
            Access::edits()
        }
    }

    fn forward(&mut self, ctx: &Context, act: &mut Activation<'_>) -> Result<()> {
        let raw = act.raw();
        let mut r = Rng(self.cfg.seed ^ self.round.wrapping_mul(0x2545_f491_4f6c_dd1d));
        self.round += 1;
        let numel = raw.numel();
        let rank = ctx.shape.len();
        let dim = ctx.shape.last().copied().unwrap_or(1) as i64;
        for _ in 0..self.cfg.calls {
            match r.below(24) {
                0 => drop(raw.shape()),
                1 => drop(raw.dtype()),
                2 => drop((raw.numel(), raw.writable())),
                3 => drop(raw.read(r.u64_around(numel), r.u64_around(numel).min(1 << 16))),
                4 => drop(raw.read(r.u64_around(numel), r.u64_around(numel))),
                5 => drop(raw.read_bytes(r.u64_around(numel), r.u64_around(numel).min(1 << 16))),
                6 => drop(raw.read_slice(&r.slice(rank, dim))),
                7 => drop(raw.slice_shape(&r.slice(rank, dim))),
                8 => drop(raw.write(r.u64_around(numel), &r.floats(64))),
                9 => drop(raw.write_bytes(r.u64_around(numel), &r.bytes(64))),
                10 => drop(raw.write_slice(&r.slice(rank, dim), &r.floats(64))),
                11 => drop(raw.fill(&r.slice(rank, dim), r.next() as f32)),
                12 => drop(raw.scale(&r.slice(rank, dim), 0.5)),
                13 => drop(raw.add_vector(&r.slice(rank, dim), &r.floats(dim as u64), 1.0)),
                14 => {
                    let v = r.floats(16);
                    drop(wout::emit(&r.name(), &r.shape(v.len() as u64), &v))
                }
                15 => {
                    let b = r.bytes(32);
                    let dt = [Dtype::F32, Dtype::F16, Dtype::Bf16][r.below(3) as usize];
                    drop(wout::emit_bytes(
                        &r.name(),
                        &r.shape(b.len() as u64 / 2),
                        dt,
                        &b,
                    ))
                }
                16 => drop(wout::emit_activation(&r.name(), raw, &r.slice(rank, dim))),
                17 => drop(wstate::get(&r.key())),
                18 => drop(wstate::set(&r.key(), &r.bytes(128))),
                19 => wstate::remove(&r.key()),
                20 => drop(wstate::keys()),
                21 => {
                    let msg = match r.below(3) {
                        0 => "line\nforged\u{1b}[31m\r".to_string(),
                        1 => "m".repeat(r.below(5000) as usize),
                        _ => r.name(),
                    };
                    wlog::log(wlog::Level::Warn, &msg)
                }
                22 => drop((
                    wrand::next_u64(),
                    wrand::uniform(r.below(64) as u32),
                    wrand::normal(r.below(64) as u32),
                )),
                _ => drop((generation::current(), pass::current_direction())),
            }
        }
        if self.cfg.fail && r.below(3) == 0 {
            return Err(Error::failed("fuzz: failing on purpose"));
        }
        emit("calls", &[1], &[self.cfg.calls as f32])
    }
}

export_hook!(Fuzz);
