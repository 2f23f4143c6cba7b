//! Uploaded components a server accepted: checked against its trust policy
//! and compiled once, then found again by the SHA-256 of the job's base64
//! text, so that a tenant uploading the same component with every job pays
//! for one hash (no decoding, no signature check, no second load). The
//! policy never changes while the server runs. Bounded: past
//! [`MAX_ENTRIES`] the oldest are forgotten (a later upload is checked
//! again). Checks and compiles pass a [`Gate`]: one at a time per
//! tenant, a few at once in all.

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
    /// Whether the component `base64_text` encodes was accepted already.
    pub fn known(&self, base64_text: &str) -> bool {
        let key: [u8; 32] = Sha256::digest(base64_text.trim().as_bytes()).into();
        self.lock().0.contains_key(&key)
    }

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

/// Checks and compiles of uploads in flight: one at a time per tenant (a
/// tenant's next waits for its previous) and at most `n` at once in all, so
/// that one tenant's uploads neither hold every core nor keep another's
/// waiting behind them.
pub struct Gate {
    all: Arc<tokio::sync::Semaphore>,
    tenants: Mutex<HashMap<String, Arc<tokio::sync::Semaphore>>>,
}

/// A place to check and compile, held until dropped.
pub struct Pass {
    _tenant: tokio::sync::OwnedSemaphorePermit,
    _all: tokio::sync::OwnedSemaphorePermit,
}

impl Gate {
    pub fn new(n: usize) -> Gate {
        Gate {
            all: Arc::new(tokio::sync::Semaphore::new(n.max(1))),
            tenants: Mutex::new(HashMap::new()),
        }
    }

    /// Wait for `tenant`'s turn, then for a free place.
    pub async fn enter(&self, tenant: &str) -> Option<Pass> {
        let mine = {
            let mut t = self.tenants.lock().unwrap_or_else(|p| p.into_inner());
            t.entry(tenant.to_string())
                .or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(1)))
                .clone()
        };
        let _tenant = mine.acquire_owned().await.ok()?;
        let _all = self.all.clone().acquire_owned().await.ok()?;
        Some(Pass { _tenant, _all })
    }
}
