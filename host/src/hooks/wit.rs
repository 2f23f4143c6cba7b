//! The contract's name and version (`wit/hook.wit`).

/// The WIT package this host implements.
pub const WIT_PACKAGE: &str = "flexmodel:hook";
/// Its version (see `wit/hook.wit`).
pub const WIT_VERSION: &str = "0.1.2";
