//! `flexmodel:hook/state`: FlexModel's `save_ctx`, per registration and rank.
//! Reads see the call's own pending writes; writes are applied only when the
//! call succeeds. Every operation is O(log n) (the store keeps its size), and
//! the bytes stored, the keys, the key length and the pending writes and
//! removals are all capped (see [`crate::hooks::limits::HostLimits`]).

use crate::hooks::bindings::flexmodel::hook::state::Host;
use crate::hooks::bindings::wit_types::HookError;
use crate::hooks::limits::ENTRY_OVERHEAD;
use crate::hooks::store::HostState;

type R<T> = wasmtime::Result<T>;

impl HostState {
    fn check_key(&mut self, key: &str) -> Result<(), HookError> {
        let max = self.limits.max_state_key_bytes;
        if key.len() > max {
            return Err(HookError::InvalidArgument(format!(
                "state key is {} bytes; at most {max} allowed",
                key.len()
            )));
        }
        Ok(())
    }

    /// (size in bytes, present) of `key` as the call sees it now.
    fn state_entry(&self, key: &str) -> (u64, bool) {
        match self.call.state_writes.get(key) {
            Some(Some(v)) => ((key.len() + v.len()) as u64, true),
            Some(None) => (0, false),
            None => match self.state.lock().get(key) {
                Some(v) => ((key.len() + v.len()) as u64, true),
                None => (0, false),
            },
        }
    }

    /// Stage `value` (or a removal) for `key`, checking every cap first.
    fn stage_state(&mut self, key: String, value: Option<Vec<u8>>) -> Result<(), HookError> {
        let (old_size, old_present) = self.state_entry(&key);
        if value.is_none() && !old_present {
            // Removing what is not there: nothing to record (so removals of
            // distinct absent keys hold no memory).
            return Ok(());
        }
        let new_size = value.as_ref().map_or(0, |v| (key.len() + v.len()) as u64);
        let (committed_bytes, committed_keys) = {
            let s = self.state.lock();
            (s.bytes(), s.len())
        };
        let projected = (committed_bytes as i64 + self.call.state_delta - old_size as i64
            + new_size as i64)
            .max(0) as u64;
        let cap = self.limits.max_state_bytes;
        if value.is_some() && projected > cap {
            return Err(HookError::LimitExceeded(format!(
                "state would hold {projected} bytes, over the cap of {cap}"
            )));
        }
        let key_delta = i64::from(value.is_some()) - i64::from(old_present);
        let keys = committed_keys as i64 + self.call.state_key_delta + key_delta;
        let max_keys = self.limits.max_state_keys;
        if keys > max_keys as i64 {
            return Err(HookError::LimitExceeded(format!(
                "state would hold {keys} keys, over the cap of {max_keys}"
            )));
        }
        // Host memory held until the call ends: the pending entry itself.
        let held = key.len() as u64 + value.as_ref().map_or(0, |v| v.len() as u64) + ENTRY_OVERHEAD;
        let replaced =
            self.call.state_writes.get(&key).map(|p| {
                key.len() as u64 + p.as_ref().map_or(0, |v| v.len() as u64) + ENTRY_OVERHEAD
            });
        if let Some(r) = replaced {
            self.release(r);
        }
        if let Err(m) = self.hold("a state write", held) {
            if let Some(r) = replaced {
                self.call.host_bytes += r;
            }
            return Err(HookError::LimitExceeded(m));
        }
        self.call.state_delta += new_size as i64 - old_size as i64;
        self.call.state_key_delta += key_delta;
        self.call.state_writes.insert(key, value);
        Ok(())
    }
}

impl Host for HostState {
    fn get(&mut self, key: String) -> R<Option<Vec<u8>>> {
        if key.len() > self.limits.max_state_key_bytes {
            self.charge(key.len() as u64);
            return Ok(None);
        }
        let v = match self.call.state_writes.get(&key) {
            Some(pending) => pending.clone(),
            None => self.state.lock().get(&key).cloned(),
        };
        self.charge((key.len() + v.as_ref().map_or(0, Vec::len)) as u64);
        Ok(v)
    }

    fn set(&mut self, key: String, value: Vec<u8>) -> R<Result<(), HookError>> {
        self.charge((key.len() + value.len()) as u64);
        if let Err(e) = self.check_key(&key) {
            return Ok(Err(e));
        }
        Ok(self.stage_state(key, Some(value)))
    }

    fn remove(&mut self, key: String) -> R<()> {
        self.charge(key.len() as u64);
        // The WIT signature has no error: an over-long key cannot be present,
        // and a removal the caps refuse fails the call when it returns.
        if key.len() > self.limits.max_state_key_bytes {
            return Ok(());
        }
        if let Err(e) = self.stage_state(key, None) {
            let msg = match e {
                HookError::LimitExceeded(m) | HookError::InvalidArgument(m) => m,
                other => format!("{other:?}"),
            };
            self.call.host_limit.get_or_insert(msg);
        }
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
        let bytes: usize = keys.iter().map(|k| k.len() + 8).sum();
        self.charge(bytes as u64);
        Ok(keys.into_iter().collect())
    }
}
