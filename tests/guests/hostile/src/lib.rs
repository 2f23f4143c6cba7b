//! A deliberately misbehaving HookFunction for the sandbox tests. The
//! configuration picks the misbehaviour: `{"mode": "loop"}` etc. Every mode
//! first writes to the activation (when it may), so the tests can check that
//! the host undoes partial edits.

use flexmodel_hook_sdk::__private::flexmodel::hook::{
    log as raw_log, output as raw_out, state as raw_state,
};
use flexmodel_hook_sdk::prelude::*;

#[derive(serde::Deserialize)]
struct Config {
    mode: String,
    #[serde(default)]
    bytes: usize,
    /// `counter` mode: panic when the counter reaches this value.
    #[serde(default)]
    panic_at: u64,
    /// Misbehave only on this global rank (elsewhere: do nothing).
    #[serde(default)]
    only_rank: Option<u32>,
}

struct Hostile(Config);

/// Unbounded recursion on the wasm call stack.
#[inline(never)]
#[allow(unconditional_recursion)]
fn recurse(n: u64) -> u64 {
    std::hint::black_box(recurse(std::hint::black_box(n + 1))) ^ n
}

/// Unbounded recursion with big locals, which exhausts the guest's own
/// (linear-memory) shadow stack first.
#[inline(never)]
#[allow(unconditional_recursion)]
fn recurse_shadow(n: u64, buf: &mut [u8; 512]) -> u64 {
    buf[(n % 512) as usize] = n as u8;
    let mut local = [0u8; 512];
    local.copy_from_slice(buf);
    recurse_shadow(n + 1, &mut local) + local[0] as u64
}

impl HookFunction for Hostile {
    fn info() -> Info {
        Info::new("hostile", "0.1.0", "Misbehaves on purpose (sandbox tests)").edits()
    }

    fn init(config: &str) -> Result<Self> {
        let c: Config = parse_config(config)?;
        if c.mode == "trap-in-init" {
            panic!("init exploded");
        }
        Ok(Hostile(c))
    }

    fn access(&self) -> Access {
        if self.0.mode.starts_with("replace") {
            Access::replaces()
        } else {
            Access::edits()
        }
    }

    fn forward(&mut self, ctx: &Context, act: &mut Activation<'_>) -> Result<()> {
        if self.0.only_rank.is_some_and(|r| r != ctx.rank.global_rank) {
            return Ok(());
        }
        let n = act.numel();
        // A partial edit first: must be undone by the host when we fail.
        let no_edit = [
            "counter",
            "env",
            "state-many",
            "diverge",
            "diverge-emit",
            "log-forge",
            "same-key",
            "emit-point",
        ];
        if !no_edit.contains(&self.0.mode.as_str()) && !self.0.mode.starts_with("replace") {
            act.fill(&Slice::all(), 1234.5)?;
        }
        match self.0.mode.as_str() {
            "loop" => {
                let mut x: u64 = 1;
                loop {
                    x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
                }
            }
            "memory" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1u8; 16 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            "recurse" => {
                std::hint::black_box(recurse(0));
                Ok(())
            }
            "recurse-shadow" => {
                let mut b = [0u8; 512];
                std::hint::black_box(recurse_shadow(0, &mut b));
                Ok(())
            }
            "file" => {
                let s = std::fs::read_to_string("/etc/passwd")
                    .map_err(|e| Error::failed(e.to_string()))?;
                emit("leak", &[s.len()], &vec![0.0; s.len()])
            }
            "env" => {
                // Emits how many variables it can see, and their bytes.
                let v: Vec<(String, String)> = std::env::vars().collect();
                let bytes: usize = v.iter().map(|(k, x)| k.len() + x.len()).sum();
                emit("env", &[2], &[v.len() as f32, bytes as f32])
            }
            "clock" => {
                let t = std::time::SystemTime::now();
                std::hint::black_box(t);
                Ok(())
            }
            "monotonic" => {
                let t = std::time::Instant::now();
                std::hint::black_box(t);
                Ok(())
            }
            "network" => {
                let s = std::net::TcpStream::connect("127.0.0.1:9")
                    .map_err(|e| Error::failed(e.to_string()))?;
                drop(s);
                Ok(())
            }
            "panic" => panic!("hostile plugin panicked on purpose"),
            "wrong-length" => act.write_slice(&Slice::all(), &vec![0.0; n + 1]),
            "out-of-range" => act.write(n - 1, &[1.0, 2.0]),
            "bad-slice" => act.fill(&Slice::new(vec![Dim::index(1_000_000)]), 0.0),
            "error" => Err(Error::failed("hostile plugin failed on purpose")),
            "nan" => act.write(0, &[f32::NAN, f32::INFINITY]),
            "big-output" => emit("big", &[self.0.bytes / 4], &vec![0.5; self.0.bytes / 4]),
            "ignore-big-output" => {
                let _ = emit("big", &[self.0.bytes / 4], &vec![0.5; self.0.bytes / 4]);
                Ok(())
            }
            "counter" => {
                let c: u64 = state::get_json("calls")?.unwrap_or(0) + 1;
                state::set_json("calls", &c)?;
                if c == self.0.panic_at {
                    panic!("counter reached {c}");
                }
                emit("calls", &[1], &[c as f32])
            }
            "replace-negate" => {
                // Reads see the original; writes build the replacement.
                let v: Vec<f32> = act.read_all()?.iter().map(|x| -x).collect();
                act.write(0, &v)?;
                // Still the original after the write:
                let again = act.read(0, 1)?;
                if again[0] != -v[0] {
                    return Err(Error::failed("reads in replace mode must see the original"));
                }
                Ok(())
            }
            "replace-partial" => act.write(0, &vec![0.0; n / 2]),
            "replace-then-error" => {
                act.write(0, &vec![0.0; n])?;
                Err(Error::failed("failed after writing a full replacement"))
            }
            "state-then-error" => {
                state::set("poison", b"x")?;
                Err(Error::failed("after writing state"))
            }
            // ---- host work the fuel limit must see ----
            "journal-bomb" => loop {
                // Rewrites the whole activation forever: the journal must not
                // grow past the activation, and the host work must run out of fuel.
                act.fill(&Slice::all(), 7.0)?;
            },
            "remove-bomb" => {
                // Removals of distinct absent keys, as long as allowed.
                let mut i: u64 = 0;
                loop {
                    let key = format!("{i:0>250}");
                    raw_state::remove(&key);
                    i += 1;
                }
            }
            "state-many" => {
                // `bytes` distinct small keys in one call.
                for i in 0..self.0.bytes {
                    state::set(&format!("k{i}"), &[1, 2, 3, 4])?;
                }
                emit("keys", &[1], &[state::keys().len() as f32])
            }
            "emit-bomb" => {
                // Whole-activation emits under distinct names, errors ignored.
                let mut i: u64 = 0;
                loop {
                    let _ = act.emit(&format!("copy{i}"), &Slice::all());
                    i += 1;
                }
            }
            "zero-emits" => {
                // Zero-byte emits under distinct names, errors ignored.
                for i in 0..self.0.bytes {
                    let _ = raw_out::emit(&format!("z{i}"), &[0], &[]);
                }
                Ok(())
            }
            "log-bomb" => loop {
                raw_log::log(raw_log::Level::Info, &"x".repeat(1 << 20));
            },
            // ---- guest input that reached a panicking tch call ----
            "shape-bomb" => {
                raw_out::emit("bomb", &[u64::MAX, 0], &[]).map_err(|e| Error::from(e))?;
                Ok(())
            }
            "shape-bomb-bytes" => {
                raw_out::emit_bytes(
                    "bomb",
                    &[u64::MAX, 0],
                    flexmodel_hook_sdk::__private::wit::Dtype::F32,
                    &[],
                )
                .map_err(|e| Error::from(e))?;
                Ok(())
            }
            "fault" => {
                // Exercises the host's panic guard (fault injection, tests only).
                raw_log::log(raw_log::Level::Info, "flexmodel-test-fault");
                Ok(())
            }
            // ---- outputs and logs ----
            "dotdot" => emit("../../x", &[1], &[1.0]),
            "same-key" => {
                emit("twice", &[1], &[1.0])?;
                emit("twice", &[1], &[2.0])
            }
            "emit-point" => emit("", &[1], &[9.0]),
            "log-forge" => {
                log::info("line one\n[scale @ blocks.0] Info: forged\u{1b}[31m red\r");
                Ok(())
            }
            // ---- ranks that disagree ----
            "diverge" => act.scale(&Slice::all(), (ctx.rank.tp_rank + 1) as f32),
            "diverge-emit" => emit("rank", &[1], &[ctx.rank.tp_rank as f32]),
            _ => Err(Error::config(format!("unknown mode {:?}", self.0.mode))),
        }
    }
}

export_hook!(Hostile);
