//! `flexmodel:hook/state`: FlexModel's `save_ctx`, per registration and rank.
//! Reads see the call's own pending writes; writes are applied only when the
//! call succeeds. The total bytes stored are capped.

use crate::hooks::bindings::flexmodel::hook::state::Host;
use crate::hooks::bindings::wit_types::HookError;
use crate::hooks::store::HostState;

type R<T> = wasmtime::Result<T>;

const MAX_KEY_LEN: usize = 256;

impl Host for HostState {
    fn get(&mut self, key: String) -> R<Option<Vec<u8>>> {
        if let Some(pending) = self.call.state_writes.get(&key) {
            return Ok(pending.clone());
        }
        Ok(self.state.lock().get(&key).cloned())
    }

    fn set(&mut self, key: String, value: Vec<u8>) -> R<Result<(), HookError>> {
        if key.len() > MAX_KEY_LEN {
            return Ok(Err(HookError::InvalidArgument(format!(
                "state key is {} bytes; at most {MAX_KEY_LEN} allowed",
                key.len()
            ))));
        }
        // Size after this write: committed entries overlaid with pending ones.
        let committed = self.state.lock();
        let mut total: u64 = 0;
        for (k, v) in committed.iter() {
            if !self.call.state_writes.contains_key(k) && *k != key {
                total += (k.len() + v.len()) as u64;
            }
        }
        drop(committed);
        for (k, v) in &self.call.state_writes {
            if *k != key {
                total += v.as_ref().map_or(0, |v| (k.len() + v.len()) as u64);
            }
        }
        total += (key.len() + value.len()) as u64;
        let cap = self.limits.max_state_bytes;
        if total > cap {
            return Ok(Err(HookError::LimitExceeded(format!(
                "state would hold {total} bytes, over the cap of {cap}"
            ))));
        }
        self.call.state_writes.insert(key, Some(value));
        Ok(Ok(()))
    }

    fn remove(&mut self, key: String) -> R<()> {
        self.call.state_writes.insert(key, None);
        Ok(())
    }

    fn keys(&mut self) -> R<Vec<String>> {
        let mut keys: std::collections::BTreeSet<String> =
            self.state.lock().keys().cloned().collect();
        for (k, v) in &self.call.state_writes {
            if v.is_some() {
                keys.insert(k.clone());
            } else {
                keys.remove(k);
            }
        }
        Ok(keys.into_iter().collect())
    }
}
