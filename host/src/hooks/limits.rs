//! Every limit the host puts on a plugin, in one place, with its default.
//!
//! A plugin is untrusted code. Its own instructions are bounded by the CPU
//! limit ([`super::CpuLimit`]: fuel or a deadline) and its linear memory by
//! `RuntimeConfig::max_memory_bytes`. Everything the *host* does on a
//! plugin's behalf is bounded here:
//!
//! - **work**: every host function a guest calls is charged against the same
//!   fuel budget as the guest's own instructions ([`HostLimits::host_call_fuel`]
//!   per call plus [`HostLimits::fuel_per_kib`] per KiB it reads, writes,
//!   copies, journals, hashes or stores); a call that runs out fails with
//!   `OutOfFuel` exactly as a guest loop does;
//! - **memory** the host holds for a call (the undo journal, staged outputs,
//!   pending state writes and removals, log text): at most
//!   [`HostLimits::max_host_bytes_per_call`];
//! - **outputs**: per call (bytes, count) and per forward pass (bytes, count;
//!   a generation is one forward pass for this purpose: the caps span all of
//!   its steps), every emit charged at least [`HostLimits::min_output_charge`];
//! - **state**: bytes per registration and rank, counting keys, values and
//!   pending removals; key length; keys;
//! - **logs**: messages and bytes per call and per forward pass;
//! - **compilation** ([`CompileLimits`]): component size, and the time and
//!   memory of compiling it (in a child process under rlimits);
//! - **the compiled-code cache** ([`CacheLimits`]): total size, with the least
//!   recently used entries evicted.

use std::time::Duration;

/// Limits on the host work and host memory one plugin call may cause, and on
/// the outputs of a forward pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostLimits {
    /// Fuel charged for entering any host function (bookkeeping, lookups).
    pub host_call_fuel: u64,
    /// Fuel charged per KiB of data a host function touches.
    pub fuel_per_kib: u64,
    /// Bytes the host may hold for one call: undo journal + staged outputs +
    /// pending state writes/removals + log text.
    pub max_host_bytes_per_call: u64,
    /// Bytes one call may emit (each emit counted at least `min_output_charge`).
    pub max_output_bytes_per_call: u64,
    /// Tensors one call may emit.
    pub max_outputs_per_call: u32,
    /// Bytes one forward pass (or one whole generation) may emit, all hooks
    /// together.
    pub max_output_bytes_per_forward: u64,
    /// Tensors one forward pass (or one whole generation) may emit.
    pub max_outputs_per_forward: u64,
    /// Smallest charge of one emit, in bytes (a zero-byte emit is not free).
    pub min_output_charge: u64,
    /// Log messages kept per call; further ones are counted and dropped.
    pub max_log_messages: usize,
    /// Bytes of one log message kept (the whole message is charged to fuel).
    pub max_log_message_bytes: usize,
    /// Log messages kept per forward pass, all hooks together.
    pub max_log_messages_per_forward: usize,
    /// Bytes of state one registration may hold on one rank: keys + values,
    /// as they will be after the call's pending writes and removals.
    pub max_state_bytes: u64,
    /// Longest state key, in bytes.
    pub max_state_key_bytes: usize,
    /// Most keys one registration may hold on one rank.
    pub max_state_keys: usize,
    /// Count non-finite values written to the activation (set from the
    /// runtime's `NonFinitePolicy`).
    pub check_finite: bool,
    /// Testing only (off by default): the log message `flexmodel-test-fault`
    /// makes the log host function panic, to exercise the host's panic guard.
    #[doc(hidden)]
    pub fault_injection: bool,
}

/// Bookkeeping bytes charged per pending state entry or staged output, on
/// top of its key and value.
pub const ENTRY_OVERHEAD: u64 = 64;

impl Default for HostLimits {
    fn default() -> Self {
        HostLimits {
            host_call_fuel: 100,
            fuel_per_kib: 128,
            max_host_bytes_per_call: 2 << 30,
            max_output_bytes_per_call: 256 << 20,
            max_outputs_per_call: 1024,
            max_output_bytes_per_forward: 1 << 30,
            max_outputs_per_forward: 65_536,
            min_output_charge: 4096,
            max_log_messages: 64,
            max_log_message_bytes: 2048,
            max_log_messages_per_forward: 4096,
            max_state_bytes: 256 << 20,
            max_state_key_bytes: 256,
            max_state_keys: 65_536,
            check_finite: false,
            fault_injection: false,
        }
    }
}

impl HostLimits {
    /// Fuel for a host function that touches `bytes` bytes.
    pub fn fuel_for(&self, bytes: u64) -> u64 {
        self.host_call_fuel
            .saturating_add((bytes / 1024).saturating_mul(self.fuel_per_kib))
            .saturating_add(((bytes % 1024) * self.fuel_per_kib).div_ceil(1024))
    }

    /// Bytes one emit of `bytes` under `name` is charged.
    pub fn output_charge(&self, name: &str, bytes: u64) -> u64 {
        bytes
            .max(self.min_output_charge)
            .saturating_add(name.len() as u64)
    }
}

/// The per-forward part of [`HostLimits`], applied by the engine to all the
/// hooks of one forward pass (or one whole generation) together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ForwardLimits {
    pub max_output_bytes: u64,
    pub max_outputs: u64,
    pub max_log_messages: usize,
    pub min_output_charge: u64,
}

impl From<&HostLimits> for ForwardLimits {
    fn from(l: &HostLimits) -> Self {
        ForwardLimits {
            max_output_bytes: l.max_output_bytes_per_forward,
            max_outputs: l.max_outputs_per_forward,
            max_log_messages: l.max_log_messages_per_forward,
            min_output_charge: l.min_output_charge,
        }
    }
}

impl Default for ForwardLimits {
    fn default() -> Self {
        ForwardLimits::from(&HostLimits::default())
    }
}

/// Limits on turning a component into native code. An untrusted component is
/// compiled in a child process (`flexmodel-compile`) under these limits, so a
/// compile bomb costs at most this much and fails with `CompileLimit`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompileLimits {
    /// Largest component accepted, in bytes.
    pub max_component_bytes: usize,
    /// Wall-clock time one compilation may take.
    pub timeout: Duration,
    /// Address space of the compiling process (`RLIMIT_AS`).
    pub max_memory_bytes: u64,
    /// Compile in a child process under the limits above (the default). With
    /// `false` the component is compiled inside this process with no time or
    /// memory bound: only for components you trust.
    pub isolate: bool,
}

impl Default for CompileLimits {
    fn default() -> Self {
        CompileLimits {
            max_component_bytes: 64 << 20,
            timeout: Duration::from_secs(180),
            max_memory_bytes: 4 << 30,
            isolate: true,
        }
    }
}

/// Limits of the on-disk cache of compiled components.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheLimits {
    /// Total bytes of cache entries; least recently used entries are evicted
    /// beyond it.
    pub max_bytes: u64,
}

impl Default for CacheLimits {
    fn default() -> Self {
        CacheLimits { max_bytes: 2 << 30 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fuel_is_monotone_and_charges_the_call() {
        let l = HostLimits::default();
        assert_eq!(l.fuel_for(0), 100);
        assert_eq!(l.fuel_for(1), 101);
        assert_eq!(l.fuel_for(1024), 228);
        assert!(l.fuel_for(u64::MAX) > l.fuel_for(1 << 40));
        assert_eq!(l.output_charge("", 0), 4096);
        assert_eq!(l.output_charge("ab", 1 << 20), (1 << 20) + 2);
    }
}
