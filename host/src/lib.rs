//! FlexModel-rs host library.
//!
//! Dependencies flow one way: models → distributed → hooks/runtime → API → CLI.
//! - [`models`]: Hugging Face checkpoints run with tch, with named hook points;
//! - [`hooks`]: the sandboxed WebAssembly hook runtime;
//! - [`api`]: the FlexModel API over both.
//! The distributed engine arrives with a later issue.

pub mod api;
pub mod hooks;
pub mod models;
