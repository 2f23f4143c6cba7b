//! Uploaded components a server accepted: checked against its trust policy
//! and compiled once, then found again by the SHA-256 of the job's base64
//! text, so that a tenant uploading the same component with every job pays
//! for one hash (no decoding, no signature check, no second load). The
//! policy never changes while the server runs. Bounded: past
//! [`MAX_ENTRIES`] the oldest are forgotten (a later upload is checked
//! again).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};

use crate::api::Accepted;
use crate::hooks::Runtime;
use crate::package::resolve::Resolver;

pub const MAX_ENTRIES: usize = 64;

/// Accepted uploads by the SHA-256 of their text, and their order (oldest
/// first, forgotten first).
type Seen = (HashMap<[u8; 32], Accepted>, VecDeque<[u8; 32]>);

#[derive(Default)]
pub struct Uploads {
    seen: Mutex<Seen>,
}

impl Uploads {
    /// The component `base64` encodes, accepted by `resolver` and loaded on
    /// `rt` (or why not, one line).
    pub fn accept(
        &self,
        rt: &Arc<Runtime>,
        resolver: &Resolver,
        base64_text: &str,
    ) -> Result<Accepted, String> {
        let key: [u8; 32] = Sha256::digest(base64_text.trim().as_bytes()).into();
        if let Some(a) = self.lock().0.get(&key) {
            return Ok(a.clone());
        }
        use base64::Engine;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(base64_text.trim())
            .map_err(|e| format!("component is not base64: {e}"))?;
        let r = resolver
            .uploaded(bytes, "uploaded component")
            .map_err(|e| e.to_string())?;
        let plugin = rt.load(&r.bytes).map_err(|e| e.to_string())?;
        let a = Accepted {
            digest: r.digest,
            source: r.label,
            signed_by: r.verdict.signed_by.map(|p| p.display().to_string()),
            plugin,
        };
        let mut g = self.lock();
        let (map, order) = &mut *g;
        if map.insert(key, a.clone()).is_none() {
            order.push_back(key);
        }
        while order.len() > MAX_ENTRIES {
            if let Some(old) = order.pop_front() {
                map.remove(&old);
            }
        }
        Ok(a)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Seen> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner())
    }
}
