//! FlexModel-rs host library.
//!
//! Dependencies flow one way: models → distributed → hooks/runtime → API → CLI.
//! This crate currently holds the hook runtime ([`hooks`]); the models, the
//! distributed engine and the CLI arrive with later issues.

pub mod hooks;
pub mod models;
