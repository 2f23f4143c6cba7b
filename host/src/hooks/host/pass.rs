//! `flexmodel:hook/pass`: whether the call is a forward or a backward hook.

use crate::hooks::bindings::flexmodel::hook::pass::{Direction, Host};
use crate::hooks::store::HostState;

impl Host for HostState {
    fn current_direction(&mut self) -> wasmtime::Result<Direction> {
        self.charge(0);
        Ok(if self.call.backward {
            Direction::Backward
        } else {
            Direction::Forward
        })
    }
}
