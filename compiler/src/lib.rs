//! The compile worker of FlexModel-rs: compiles one WebAssembly component to
//! native code for the host's engine, in a process of its own so that the
//! host can bound its time and memory (`RLIMIT_AS`, `RLIMIT_CPU`, a wall
//! clock deadline). It links wasmtime only (no libtorch), so it starts fast
//! and its address-space limit measures the compiler alone.
//!
//! Protocol: the [`EngineSettings`] as JSON in the one argument, the
//! component on stdin, the artifact on stdout; exit 0, or
//! [`EXIT_INVALID`] (the component does not compile; first line of the
//! reason on stderr) or [`EXIT_OUT_OF_MEMORY`].

use std::io::{Read, Write};

use wasmtime::Config;

/// Name of the worker binary.
pub const WORKER: &str = "flexmodel-compile";

/// What the worker exits with when it ran out of memory.
pub const EXIT_OUT_OF_MEMORY: i32 = 3;
/// What it exits with when the component does not compile.
pub const EXIT_INVALID: i32 = 2;

/// Everything about the engine that decides the code it generates; the host
/// and the compile worker build their engines from it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct EngineSettings {
    pub consume_fuel: bool,
    pub epoch_interruption: bool,
    pub max_wasm_stack: usize,
}

impl EngineSettings {
    /// The wasmtime configuration shared by host and worker: sandboxed and
    /// deterministic (canonical NaNs, no relaxed SIMD, no threads).
    pub fn config(&self) -> Config {
        let mut c = Config::new();
        c.wasm_component_model(true)
            .concurrency_support(false)
            .consume_fuel(self.consume_fuel)
            .epoch_interruption(self.epoch_interruption)
            .max_wasm_stack(self.max_wasm_stack)
            .cranelift_nan_canonicalization(true)
            .wasm_relaxed_simd(false)
            .memory_init_cow(true);
        c
    }
}

/// The worker's `main`: settings as the one argument, the component on
/// stdin, the artifact on stdout.
pub fn worker_main() -> i32 {
    let Some(arg) = std::env::args().nth(1) else {
        eprintln!("usage: {WORKER} SETTINGS_JSON < component.wasm > artifact.cwasm");
        return 64;
    };
    let settings: EngineSettings = match serde_json::from_str(&arg) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("bad settings: {e}");
            return 64;
        }
    };
    let mut bytes = Vec::new();
    if let Err(e) = std::io::stdin().read_to_end(&mut bytes) {
        eprintln!("reading the component: {e}");
        return 74;
    }
    let mut config = settings.config();
    config.parallel_compilation(true);
    let engine = match wasmtime::Engine::new(&config) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("engine: {e:#}");
            return 70;
        }
    };
    match engine.precompile_component(&bytes) {
        Ok(art) => {
            if std::io::stdout().write_all(&art).is_err() {
                return 74;
            }
            0
        }
        Err(e) => {
            let text = format!("{e:#}");
            if text.contains("out of memory") || text.contains("memory allocation") {
                return EXIT_OUT_OF_MEMORY;
            }
            eprintln!("{}", text.lines().next().unwrap_or(""));
            EXIT_INVALID
        }
    }
}
