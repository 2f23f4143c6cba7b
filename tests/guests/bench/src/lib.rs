//! Benchmark guest: `{"mode": ...}` picks what a call does.
//! - `noop`: nothing (per-call overhead);
//! - `read-chunks`: read the whole activation as native bytes in 64 KiB
//!   chunks into guest memory, touching every chunk;
//! - `write-chunks`: write the whole activation from guest memory in 64 KiB chunks;
//! - `spin`: a tight loop of `iters` iterations (fuel vs epoch cost);
//! - `random`: emit draws from the host-seeded random stream;
//! - `try-write`: write although the access is read-only (must fail);
//! - `log`: log one message.

use flexmodel_hook_sdk::prelude::*;

#[derive(serde::Deserialize)]
struct Config {
    mode: String,
    #[serde(default)]
    iters: u64,
}

struct Bench {
    cfg: Config,
    buf: Vec<u8>,
    checksum: u64,
}

const CHUNK_BYTES: usize = 64 * 1024;

impl HookFunction for Bench {
    fn info() -> Info {
        Info::new("bench", "0.1.0", "Benchmark and state-test guest").edits()
    }

    fn init(config: &str) -> Result<Self> {
        Ok(Bench {
            cfg: parse_config(config)?,
            buf: vec![7u8; CHUNK_BYTES],
            checksum: 0,
        })
    }

    fn access(&self) -> Access {
        match self.cfg.mode.as_str() {
            "write-chunks" => Access::edits(),
            _ => Access::read_only(),
        }
    }

    fn forward(&mut self, ctx: &Context, act: &mut Activation<'_>) -> Result<()> {
        let es = ctx.dtype.size();
        let n = act.numel();
        let per = CHUNK_BYTES / es;
        match self.cfg.mode.as_str() {
            "noop" => Ok(()),
            "read-chunks" => {
                let mut off = 0;
                while off < n {
                    let len = per.min(n - off);
                    let b = act.read_bytes(off, len)?;
                    self.checksum = self
                        .checksum
                        .wrapping_add(b[0] as u64 + b[b.len() - 1] as u64);
                    off += len;
                }
                std::hint::black_box(self.checksum);
                Ok(())
            }
            "write-chunks" => {
                let mut off = 0;
                while off < n {
                    let len = per.min(n - off);
                    act.write_bytes(off, &self.buf[..len * es])?;
                    off += len;
                }
                Ok(())
            }
            "spin" => {
                let mut x: u64 = 1;
                for i in 0..self.cfg.iters {
                    x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(i));
                }
                self.checksum = x;
                Ok(())
            }
            "random" => {
                emit("uniform", &[4], &random::uniform(4))?;
                emit("normal", &[4], &random::normal(4))?;
                emit("u64", &[1], &[(random::next_u64() >> 40) as f32])
            }
            "try-write" => act.write(0, &[1.0]),
            "log" => {
                log::info(&format!(
                    "hello from {} at forward {}",
                    ctx.hook_point, ctx.forward_index
                ));
                Ok(())
            }
            m => Err(Error::config(format!("unknown mode {m:?}"))),
        }
    }
}

export_hook!(Bench);
