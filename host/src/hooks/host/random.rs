//! `flexmodel:hook/random`: a deterministic stream seeded by the host per call
//! (user seed, registration, hook point, forward index), identical on every
//! rank, so edits drawn from it agree across tensor-parallel shards.

use rand::RngExt;

use crate::hooks::bindings::flexmodel::hook::random::Host;
use crate::hooks::store::HostState;

/// Largest batch one call may ask for (16 Mi values, 64 MiB).
const MAX_N: u32 = 1 << 24;

impl Host for HostState {
    fn next_u64(&mut self) -> wasmtime::Result<u64> {
        self.charge(8);
        Ok(self.call.rng().random::<u64>())
    }

    fn uniform(&mut self, n: u32) -> wasmtime::Result<Vec<f32>> {
        let n = n.min(MAX_N);
        self.charge(u64::from(n) * 4);
        Ok((0..n).map(|_| self.call.rng().random::<f32>()).collect())
    }

    fn normal(&mut self, n: u32) -> wasmtime::Result<Vec<f32>> {
        // Box–Muller in f64, two values per pair of uniforms.
        let n = n.min(MAX_N) as usize;
        self.charge(n as u64 * 8);
        let mut out = Vec::with_capacity(n + 1);
        while out.len() < n {
            let u1: f64 = 1.0 - self.call.rng().random::<f64>(); // (0, 1]
            let u2: f64 = self.call.rng().random::<f64>();
            let r = (-2.0 * u1.ln()).sqrt();
            let t = 2.0 * std::f64::consts::PI * u2;
            out.push((r * t.cos()) as f32);
            out.push((r * t.sin()) as f32);
        }
        out.truncate(n);
        Ok(out)
    }
}
