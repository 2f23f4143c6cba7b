//! `flexmodel:hook/generation`: the generation step of the current call.

use crate::hooks::bindings::flexmodel::hook::generation::{GenStep, Host};
use crate::hooks::store::HostState;

impl Host for HostState {
    fn current(&mut self) -> wasmtime::Result<Option<GenStep>> {
        self.charge(0);
        Ok(self.call.generation.map(|g| GenStep {
            step: g.step,
            position: g.position,
        }))
    }
}
