//! API keys: `fm_<id>_<secret>` (id: 12 hex digits, secret: 32 random
//! bytes as hex), printed once at creation; the store keeps the id, the
//! tenant and the SHA-256 of the secret (a 256-bit random secret needs no
//! slow hash). Checked on every request, so a revocation takes effect on
//! the next one.

use sha2::{Digest, Sha256};

use super::ServiceError;
use super::store::Store;

fn random_hex(bytes: usize) -> Result<String, ServiceError> {
    let mut b = vec![0u8; bytes];
    getrandom::fill(&mut b).map_err(|e| ServiceError::Store(format!("no randomness: {e}")))?;
    Ok(hex::encode(b))
}

fn hash(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// Make a key for `tenant`; the key, shown once.
pub fn add(store: &Store, tenant: &str) -> Result<String, ServiceError> {
    if !crate::hooks::manifest::valid_ident(tenant) {
        return Err(ServiceError::Input(format!(
            "tenant {tenant:?} must be 1-64 characters of [a-z0-9-]"
        )));
    }
    let id = random_hex(6)?;
    let secret = random_hex(32)?;
    store.add_key(&id, tenant, &hash(&secret))?;
    Ok(format!("fm_{id}_{secret}"))
}

/// The tenant of `key`, if it is a live key.
pub fn tenant_of(store: &Store, key: &str) -> Result<Option<String>, ServiceError> {
    let Some(rest) = key.strip_prefix("fm_") else {
        return Ok(None);
    };
    let Some((id, secret)) = rest.split_once('_') else {
        return Ok(None);
    };
    let Some((tenant, stored)) = store.key(id)? else {
        return Ok(None);
    };
    // Equal-time comparison of the hashes.
    let h = hash(secret);
    let same = h.len() == stored.len()
        && h.bytes()
            .zip(stored.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0;
    Ok(same.then_some(tenant))
}
