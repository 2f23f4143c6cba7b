//! Shared helpers for the integration tests: where the guest components built
//! by `scripts/build-guests.sh` live, and runtimes configured for tests.

use std::path::PathBuf;
use std::sync::Arc;

use flexmodel::hooks::{CpuLimit, Runtime, RuntimeConfig};
use tch::{Kind, Tensor};

/// Folder holding the built `.wasm` components (`$FLEXMODEL_ARTIFACTS` or
/// `<workspace>/artifacts/wasm`).
pub fn artifacts_dir() -> PathBuf {
    std::env::var_os("FLEXMODEL_ARTIFACTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../artifacts/wasm"))
}

/// Bytes of a built component; fails with the command to build it.
pub fn wasm(name: &str) -> Vec<u8> {
    let p = artifacts_dir().join(format!("{name}.wasm"));
    std::fs::read(&p).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; build the guests first: scripts/build-guests.sh",
            p.display()
        )
    })
}

/// A runtime with the default (production) configuration, except a test
/// cache directory shared by the test binaries.
pub fn runtime() -> Arc<Runtime> {
    runtime_with(|_| {})
}

/// A runtime with the default configuration adjusted by `f`.
pub fn runtime_with(f: impl FnOnce(&mut RuntimeConfig)) -> Arc<Runtime> {
    let mut c = RuntimeConfig {
        cache_dir: Some(artifacts_dir().join("../cwasm-cache")),
        ..RuntimeConfig::default()
    };
    f(&mut c);
    Runtime::new(c).expect("runtime")
}

/// A runtime with a small fuel budget, so runaway guests stop quickly.
pub fn small_fuel_runtime() -> Arc<Runtime> {
    runtime_with(|c| c.cpu = CpuLimit::Fuel(200_000_000))
}

/// Largest absolute elementwise difference, computed in f64.
pub fn max_abs(a: &Tensor, b: &Tensor) -> f64 {
    (a.to_kind(Kind::Double) - b.to_kind(Kind::Double))
        .abs()
        .max()
        .double_value(&[])
}

/// Folder of a tiny model made by `tests/reference/make_models.py`
/// (`$FLEXMODEL_MODELS` or `<workspace>/artifacts/models`).
pub fn model_dir(name: &str) -> PathBuf {
    std::env::var_os("FLEXMODEL_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../artifacts/models"))
        .join(name)
}

/// A model-level hook site that records every activation the forward
/// passes through (a copy, detached).
#[derive(Default)]
pub struct Capture(pub std::collections::BTreeMap<String, Tensor>);

impl flexmodel::models::HookSite for Capture {
    fn active(&self, _: &str) -> bool {
        true
    }
    fn fire(&mut self, point: &str, t: Tensor) -> Result<Tensor, flexmodel::models::ModelError> {
        self.0.insert(point.to_string(), t.detach().copy());
        Ok(t)
    }
}

/// Greedy generation of `n` tokens, ignoring EOS.
pub fn greedy(n: usize) -> flexmodel::api::GenerateOptions {
    flexmodel::api::GenerateOptions {
        max_new_tokens: n,
        sampling: flexmodel::api::Sampling::Greedy,
        eos: Vec::new(),
        ..flexmodel::api::GenerateOptions::default()
    }
}
