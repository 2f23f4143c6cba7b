//! Benchmark guest: `{"mode": ...}` picks what a call does.
//! - `noop`: nothing (per-call overhead);
//! - `read-chunks`: read the whole activation as native bytes in `chunk`-byte
//!   pieces (default 64 KiB) into guest memory, touching every piece;
//! - `write-chunks`: overwrite the whole activation in place from guest memory in
//!   `chunk`-byte pieces; `replace-chunks`: the same in edit mode `replace`;
//! - `spin`: a tight loop of `iters` dependent multiply-adds (fuel vs epoch cost);
//! - `sum`: `iters` passes of a byte sum over a 64 KiB guest buffer;
//! - `random`: emit draws from the host-seeded random stream;
//! - `try-write`: write although the access is read-only (must fail);
//! - `log`: log one message.

use flexmodel_hook_sdk::prelude::*;

#[derive(serde::Deserialize)]
struct Config {
    mode: String,
    #[serde(default)]
    iters: u64,
    /// Chunk size in bytes for `read-chunks` / `write-chunks` (default 64 KiB).
    #[serde(default = "default_chunk")]
    chunk: usize,
}

fn default_chunk() -> usize {
    64 * 1024
}

struct Bench {
    cfg: Config,
    buf: Vec<u8>,
    checksum: u64,
}

impl HookFunction for Bench {
    fn info() -> Info {
        Info::new("bench", "0.1.0", "Benchmark and state-test guest").edits()
    }

    fn init(config: &str) -> Result<Self> {
        let cfg: Config = parse_config(config)?;
        if cfg.chunk < 4 || cfg.chunk > 64 << 20 {
            return Err(Error::config("chunk must be 4 B .. 64 MiB"));
        }
        let buf = vec![7u8; cfg.chunk];
        Ok(Bench {
            cfg,
            buf,
            checksum: 0,
        })
    }

    fn access(&self) -> Access {
        match self.cfg.mode.as_str() {
            "write-chunks" => Access::edits(),
            "replace-chunks" => Access::replaces(),
            _ => Access::read_only(),
        }
    }

    fn forward(&mut self, ctx: &Context, act: &mut Activation<'_>) -> Result<()> {
        let es = ctx.dtype.size();
        let n = act.numel();
        let per = self.cfg.chunk / es;
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
            "write-chunks" | "replace-chunks" => {
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
            "sum" => {
                // `iters` passes of a reduction over a 64 KiB guest buffer.
                let mut acc: u64 = 0;
                for _ in 0..self.cfg.iters {
                    for &b in std::hint::black_box(&self.buf).iter() {
                        acc = acc.wrapping_add(b as u64);
                    }
                }
                self.checksum = std::hint::black_box(acc);
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
