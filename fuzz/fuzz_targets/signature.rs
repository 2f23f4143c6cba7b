//! The signature section: our reader (signed / unsigned / modified), the
//! trust check that builds on it, and wasmsign2's own parser.
#![no_main]
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;

fn key() -> &'static wasmsign2::PublicKey {
    static K: OnceLock<wasmsign2::PublicKey> = OnceLock::new();
    K.get_or_init(|| wasmsign2::KeyPair::generate().pk)
}

fuzz_target!(|data: &[u8]| {
    let _ = wasmsign2::SignatureData::deserialize(data);
    let _ = flexmodel::package::sign::signature(data);
    let _ = flexmodel::package::sign::verified_by(data, key());
    let _ = flexmodel::package::TrustPolicy::allow_unsigned().check(data, "fuzz");
    let _ = flexmodel::package::inspect::inspect(data);
});
