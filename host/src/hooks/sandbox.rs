//! The sandbox around a plugin instance.
//!
//! A guest language's runtime may need WASI imports just to link (Rust's std,
//! CPython, ...). They are provided, with nothing granted:
//! - no preopened directories, no environment, no arguments, no stdin;
//! - stdout/stderr go to a small in-memory capture shown only in error
//!   reports (so a panic message reaches the user), never to the terminal;
//! - no sockets and no name lookups;
//! - `wasi:random` is a deterministic stream seeded by the host, so guest
//!   hash maps and the like behave identically on every rank.
//!
//! Using a capability that is not granted (reading a clock, asking for
//! preopened directories, creating a socket) traps with [`Denied`], reported
//! as `CapabilityDenied` naming the capability. The environment is special:
//! language runtimes read it routinely (CPython at start-up, Rust's panic
//! handler for `RUST_BACKTRACE`), so an ungranted environment is empty rather
//! than trapping, and a read during a hook call fails that call with
//! `CapabilityDenied { "environment variables" }` after it returns.
//! [`Grants`] turns individual capabilities on.

use std::path::PathBuf;

use rand::SeedableRng;
use rand::rngs::StdRng;
use wasmtime::component::Linker;
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder};

use super::store::HostState;

/// Capabilities a plugin may be granted. Everything is off by default.
#[derive(Debug, Clone, Default)]
pub struct Grants {
    /// Real wall and monotonic clocks (non-deterministic across ranks).
    pub clocks: bool,
    /// Environment variables visible to the guest.
    pub env: Vec<(String, String)>,
    /// Host directories mounted read-only: (host path, guest path).
    pub read_only_dirs: Vec<(PathBuf, String)>,
}

/// The trap raised when a guest uses a capability it was not granted.
#[derive(Debug, Clone, thiserror::Error)]
#[error("capability not granted: {0}")]
pub struct Denied(pub String);

pub use super::capture::{CAPTURE_BYTES, Capture};

/// A WASI context with only what `grants` allows, randomness seeded by `seed`.
pub fn wasi_ctx(grants: &Grants, seed: u64, capture: &Capture) -> anyhow::Result<WasiCtx> {
    let mut b = WasiCtxBuilder::new();
    b.stdout(capture.clone()).stderr(capture.clone());
    b.secure_random(StdRng::seed_from_u64(seed));
    b.insecure_random(StdRng::seed_from_u64(seed ^ 0x9e37_79b9_7f4a_7c15));
    b.insecure_random_seed(u128::from(seed) << 64 | u128::from(!seed));
    b.allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false);
    for (k, v) in &grants.env {
        b.env(k, v);
    }
    for (host, guest) in &grants.read_only_dirs {
        b.preopened_dir(host, guest, wasmtime_wasi::FsPerms::ReadOnly)?;
    }
    Ok(b.build())
}

/// WASI version this host implements (wasmtime-wasi's); guests built against
/// any `0.2.x` link to it.
const WASI: &str = "0.2.12";

/// Functions that trap unless their capability is granted: (interface,
/// function, capability name).
fn denied_functions(grants: &Grants) -> Vec<(&'static str, &'static str, &'static str)> {
    let mut v = vec![
        (
            "wasi:sockets/tcp-create-socket",
            "create-tcp-socket",
            "network (TCP)",
        ),
        (
            "wasi:sockets/udp-create-socket",
            "create-udp-socket",
            "network (UDP)",
        ),
        (
            "wasi:sockets/ip-name-lookup",
            "resolve-addresses",
            "network (DNS)",
        ),
        (
            "wasi:sockets/instance-network",
            "instance-network",
            "network",
        ),
    ];
    if !grants.clocks {
        v.extend([
            ("wasi:clocks/wall-clock", "now", "wall clock"),
            ("wasi:clocks/wall-clock", "resolution", "wall clock"),
            ("wasi:clocks/monotonic-clock", "now", "monotonic clock"),
            (
                "wasi:clocks/monotonic-clock",
                "resolution",
                "monotonic clock",
            ),
            (
                "wasi:clocks/monotonic-clock",
                "subscribe-instant",
                "monotonic clock",
            ),
            (
                "wasi:clocks/monotonic-clock",
                "subscribe-duration",
                "monotonic clock",
            ),
        ]);
    }
    if grants.read_only_dirs.is_empty() {
        v.push(("wasi:filesystem/preopens", "get-directories", "filesystem"));
    }
    v
}

/// Add WASI (nothing granted) to `linker`, then replace every function of a
/// capability not in `grants` with one that traps with [`Denied`].
pub fn add_wasi(linker: &mut Linker<HostState>, grants: &Grants) -> anyhow::Result<()> {
    wasmtime_wasi::p2::add_to_linker_sync(linker)?;
    linker.allow_shadowing(true);
    for (iface, func, capability) in denied_functions(grants) {
        let mut inst = linker.instance(&format!("{iface}@{WASI}"))?;
        inst.func_new(func, move |mut store, _ty, _params, _results| {
            store.data_mut().denied = Some(capability.to_string());
            Err(wasmtime::Error::new(Denied(capability.to_string())))
        })?;
    }
    if grants.env.is_empty() {
        // The environment is empty. Language runtimes read it while starting
        // (instantiation, `init`) and that is fine; a read during a hook call
        // is the plugin asking for a capability it was not granted: the call
        // fails with `CapabilityDenied` once it returns (unless it failed
        // otherwise, e.g. a panic, whose handler reads RUST_BACKTRACE).
        let mut env = linker.instance(&format!("wasi:cli/environment@{WASI}"))?;
        env.func_new("get-environment", |mut store, _ty, _params, results| {
            let d = store.data_mut();
            if d.in_call {
                d.env_read = true;
            }
            results[0] = wasmtime::component::Val::List(Vec::new());
            Ok(())
        })?;
    }
    linker.allow_shadowing(false);
    Ok(())
}
