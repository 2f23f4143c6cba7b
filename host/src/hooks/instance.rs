//! One live instance of a plugin (one per registration and rank): its `Store`,
//! the calls into it under the CPU limit, the transaction around each call,
//! and the mapping of every failure to a typed [`HookErrorKind`].
//!
//! After a trap the instance must not be used again: the caller drops it and
//! creates a fresh one on next use (plugin state lives outside the store and
//! survives).

use tch::Tensor;
use wasmtime::Store;
use wasmtime::component::Resource;

use super::activation::{ActivationBuf, Committed, EditMode, Journal};
use super::artifact::{Plugin, PluginInfo};
use super::bindings::HookPlugin;
use super::bindings::wit_types as wit;
use super::config::{CpuLimit, NonFinitePolicy};
use super::error::{HookError, HookErrorKind, PluginError, TrapText};
use super::hook::{Access, CallContext, CallReport, LogLevel};
use super::host::{from_wit_slice, to_wit_dtype};
use super::sandbox::{self, Capture, Denied};
use super::store::{CallScope, HostState, Limiter, StateMap};

/// A live plugin instance.
pub struct PluginInstance {
    store: Store<HostState>,
    bindings: HookPlugin,
    plugin: String,
    rank: u32,
    /// The hook point named in errors raised outside a call (init, metadata).
    context: String,
    cpu: CpuLimit,
    deadline_ticks: u64,
    policy: NonFinitePolicy,
    /// Undo journal reused across calls.
    journal: Journal,
}

impl From<wit::HookError> for PluginError {
    fn from(e: wit::HookError) -> Self {
        match e {
            wit::HookError::InvalidConfig(m) => PluginError::InvalidConfig(m),
            wit::HookError::InvalidArgument(m) => PluginError::InvalidArgument(m),
            wit::HookError::Unsupported(m) => PluginError::Unsupported(m),
            wit::HookError::LimitExceeded(m) => PluginError::LimitExceeded(m),
            wit::HookError::Failed(m) => PluginError::Failed(m),
        }
    }
}

impl PluginInstance {
    /// Instantiate `plugin` for `rank`, with `state` as its persistent state.
    /// `context` names the hook point (or phase) in errors.
    pub fn new(
        plugin: &Plugin,
        context: String,
        rank: u32,
        state: StateMap,
    ) -> Result<Self, HookError> {
        let rt = &plugin.core;
        let capture = Capture::default();
        let seed = stream_seed(rt.config.seed, &plugin.hash, "wasi", 0);
        let err = |kind| HookError {
            plugin: plugin.info.name.clone(),
            hook_point: context.clone(),
            rank,
            kind,
        };
        let wasi = sandbox::wasi_ctx(&rt.config.grants, seed, &capture).map_err(|e| {
            err(HookErrorKind::Instantiate {
                message: format!("{e:#}"),
            })
        })?;
        let data = HostState {
            wasi,
            table: wasmtime::component::ResourceTable::new(),
            limiter: Limiter {
                max_memory_bytes: plugin.max_memory_bytes,
                max_table_elements: rt.config.max_table_elements,
                memory_hit: false,
                table_hit: false,
            },
            limits: rt.limits.clone(),
            state,
            call: CallScope::new(&context, seed),
            denied: None,
            in_call: false,
            env_read: false,
            stdio: capture,
        };
        let mut store = Store::new(&rt.engine, data);
        store.limiter(|s| &mut s.limiter);
        if matches!(rt.config.cpu, CpuLimit::Fuel(_)) {
            store.call_hook(charge_host_fuel);
        }
        let name = if plugin.info.name.is_empty() {
            "<unnamed>".to_string()
        } else {
            plugin.info.name.clone()
        };
        let cpu = plugin.cpu();
        let deadline_ticks = rt.deadline_ticks();
        arm(&mut store, cpu, deadline_ticks);
        // Instantiation runs guest code (start functions): limits are already armed.
        let instantiated = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            plugin.pre.instantiate(&mut store)
        }))
        .unwrap_or_else(|p| Err(host_panic(p)));
        match instantiated {
            Ok(bindings) => Ok(PluginInstance {
                store,
                bindings,
                plugin: name,
                rank,
                context,
                cpu,
                deadline_ticks,
                policy: rt.config.non_finite,
                journal: Journal::default(),
            }),
            Err(e) => {
                let kind = match classify(&store, cpu, &e) {
                    HookErrorKind::Trap { message } => HookErrorKind::Instantiate { message },
                    k => k,
                };
                Err(HookError {
                    plugin: name,
                    hook_point: context,
                    rank,
                    kind,
                })
            }
        }
    }

    fn error(&self, kind: HookErrorKind) -> HookError {
        HookError {
            plugin: self.plugin.clone(),
            hook_point: self.context.clone(),
            rank: self.rank,
            kind,
        }
    }

    fn arm(&mut self) {
        arm(&mut self.store, self.cpu, self.deadline_ticks);
    }

    fn classify(&self, e: &wasmtime::Error) -> HookErrorKind {
        classify(&self.store, self.cpu, e)
    }

    /// The plugin's self-description.
    pub fn metadata(&mut self) -> Result<PluginInfo, HookError> {
        self.arm();
        let r = guarded(|| {
            self.bindings
                .flexmodel_hook_plugin()
                .call_metadata(&mut self.store)
        });
        match r {
            Ok(i) => Ok(PluginInfo {
                name: i.name,
                version: i.version,
                description: i.description,
                hook_points: i.hook_points,
                edits: i.edits,
            }),
            Err(e) => Err(self.error(self.classify(&e))),
        }
    }

    /// Initialise with the user's configuration; returns the declared access.
    /// Errors are returned with `broken = true` when the instance trapped.
    pub fn init(&mut self, config: &str) -> Result<Access, (HookError, bool)> {
        self.arm();
        let r = guarded(|| {
            self.bindings
                .flexmodel_hook_plugin()
                .call_init(&mut self.store, config)
        });
        match r {
            Ok(Ok(a)) => Ok(Access {
                mode: match a.mode {
                    wit::EditMode::ReadOnly => EditMode::ReadOnly,
                    wit::EditMode::InPlace => EditMode::InPlace,
                    wit::EditMode::Replace => EditMode::Replace,
                },
                reads: a.reads.map(|s| from_wit_slice(&s)),
            }),
            Ok(Err(e)) => Err((self.error(HookErrorKind::Plugin(e.into())), false)),
            Err(e) => Err((self.error(self.classify(&e)), true)),
        }
    }

    /// Call the plugin's forward hook on `tensor`. On success the edit is
    /// committed and the call's outputs, logs and state writes are returned /
    /// applied; on any failure all of them are discarded and the tensor is
    /// exactly as before. The `bool` in the error says the instance trapped
    /// and must be dropped.
    pub fn call(
        &mut self,
        ctx: &CallContext,
        tensor: &mut Tensor,
        access: &Access,
        seed: u64,
    ) -> Result<CallReport, (HookError, bool)> {
        self.context = ctx.hook_point.clone();
        let check_finite = self.policy != NonFinitePolicy::Allow;
        let journal = std::mem::take(&mut self.journal);
        let buf = ActivationBuf::new(tensor, access.mode, check_finite, journal)
            .map_err(|message| (self.error(HookErrorKind::BadActivation { message }), false))?;
        let wit_ctx = wit_context(ctx, &buf);
        self.arm();
        self.store.data_mut().call = CallScope::new(&ctx.hook_point, seed);
        self.store.data_mut().call.generation = ctx.generation;
        self.store.data_mut().call.backward = ctx.backward;
        self.store.data_mut().call.tokens = ctx.tokens.clone();
        let res = self.store.data_mut().table.push(buf).map_err(|e| {
            (
                self.error(HookErrorKind::Trap {
                    message: e.to_string(),
                }),
                false,
            )
        })?;
        let borrow = Resource::<ActivationBuf>::new_borrow(res.rep());
        self.store.data_mut().in_call = true;
        // A host function that panics (a host bug reached through guest
        // input) must not take the host down or skip the rollback: the panic
        // is caught here, after wasmtime unwound the guest's frames.
        let r = guarded(|| {
            self.bindings
                .flexmodel_hook_plugin()
                .call_on_forward(&mut self.store, &wit_ctx, borrow)
        });

        self.store.data_mut().in_call = false;
        let env_read = self.store.data().env_read;
        // Take the activation back out of the table whatever happened.
        let buf = match self.store.data_mut().table.delete(res) {
            Ok(b) => b,
            Err(e) => {
                // Cannot happen (the host owns the handle); treat as a broken instance.
                return Err((
                    self.error(HookErrorKind::Trap {
                        message: e.to_string(),
                    }),
                    true,
                ));
            }
        };
        let scope = std::mem::replace(&mut self.store.data_mut().call, CallScope::new("", 0));
        if let (Some(msg), Ok(_)) = (&scope.host_limit, &r) {
            // A host-side cap was hit; the plugin may have ignored the error.
            let kind = HookErrorKind::Plugin(PluginError::LimitExceeded(msg.clone()));
            return self.fail(buf, kind, false);
        }
        match r {
            Err(e) => {
                let kind = self.classify(&e);
                self.fail(buf, kind, true)
            }
            Ok(Err(e)) => self.fail(buf, HookErrorKind::Plugin(e.into()), false),
            Ok(Ok(())) => self.succeeded(buf, scope, env_read, tensor),
        }
    }

    /// Undo the call's edits; the error, and whether the instance is broken.
    fn fail(
        &mut self,
        buf: ActivationBuf,
        kind: HookErrorKind,
        broken: bool,
    ) -> Result<CallReport, (HookError, bool)> {
        self.journal = buf.rollback();
        Err((self.error(kind), broken))
    }

    /// A call the guest returned from successfully: the host's own checks
    /// (capabilities, refused outputs, non-finite values), then commit the
    /// edit and the state writes, and report.
    fn succeeded(
        &mut self,
        buf: ActivationBuf,
        scope: CallScope,
        env_read: bool,
        tensor: &mut Tensor,
    ) -> Result<CallReport, (HookError, bool)> {
        if env_read {
            let kind = HookErrorKind::CapabilityDenied {
                capability: "environment variables".into(),
            };
            // Dropped like a trapped instance: its runtime may have cached the
            // (empty) environment, so the next call would read it unseen.
            return self.fail(buf, kind, true);
        }
        if let Some(msg) = scope.output_refused {
            let kind = HookErrorKind::Plugin(PluginError::LimitExceeded(msg));
            return self.fail(buf, kind, false);
        }
        let non_finite = buf.stats.non_finite;
        if non_finite > 0 && self.policy == NonFinitePolicy::Reject {
            return self.fail(buf, HookErrorKind::NonFinite { count: non_finite }, false);
        }
        let edited = match buf.commit() {
            Ok((committed, journal)) => {
                self.journal = journal;
                match committed {
                    Committed::Unchanged => false,
                    Committed::InPlace => true,
                    Committed::Replaced(t) => {
                        *tensor = t;
                        true
                    }
                }
            }
            Err((e, journal)) => {
                self.journal = journal;
                let kind = HookErrorKind::Plugin(PluginError::InvalidArgument(e.0));
                return Err((self.error(kind), false));
            }
        };
        // Apply state writes.
        {
            let mut st = self.store.data().state.lock();
            for (k, v) in scope.state_writes {
                match v {
                    Some(v) => st.insert(k, v),
                    None => st.remove(&k),
                }
            }
        }
        let mut logs = scope.logs;
        if scope.logs_dropped > 0 {
            logs.push((
                LogLevel::Warn,
                format!("{} further log message(s) dropped", scope.logs_dropped),
            ));
        }
        if non_finite > 0 {
            logs.push((
                LogLevel::Warn,
                format!("wrote {non_finite} non-finite value(s)"),
            ));
        }
        Ok(CallReport {
            emitted: scope.emitted,
            logs,
            non_finite_written: non_finite,
            edited,
        })
    }
}

/// The call context the guest sees.
fn wit_context(ctx: &CallContext, buf: &ActivationBuf) -> wit::CallContext {
    wit::CallContext {
        hook_point: ctx.hook_point.clone(),
        shape: buf.shape().iter().map(|&d| d as u64).collect(),
        dtype: to_wit_dtype(buf.dtype()),
        rank: wit::RankInfo {
            tp_rank: ctx.rank.tp_rank,
            tp_size: ctx.rank.tp_size,
            pp_rank: ctx.rank.pp_rank,
            pp_size: ctx.rank.pp_size,
            dp_rank: ctx.rank.dp_rank,
            dp_size: ctx.rank.dp_size,
            global_rank: ctx.rank.global_rank,
            world_size: ctx.rank.world_size,
        },
        forward_index: ctx.forward_index,
    }
}

/// Seed of a deterministic stream: identical on every rank and process for
/// the same (user seed, plugin, purpose, counter). FNV-1a over the inputs,
/// finished with SplitMix64: stable across platforms and releases.
pub(crate) fn stream_seed(seed: u64, plugin_hash: &str, purpose: &str, counter: u64) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for &b in bytes {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        h ^= 0xff;
        h = h.wrapping_mul(0x0100_0000_01b3);
    };
    eat(&seed.to_le_bytes());
    eat(plugin_hash.as_bytes());
    eat(purpose.as_bytes());
    eat(&counter.to_le_bytes());
    let mut z = h.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The panic of a host function, as the error of the guest call it ended.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct HostPanicked(pub String);

fn host_panic(p: Box<dyn std::any::Any + Send>) -> wasmtime::Error {
    let msg = p
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a host function panicked".into());
    // tch's panics carry a multi-line libtorch backtrace: keep the first line.
    let first = msg.lines().next().unwrap_or("").to_string();
    wasmtime::Error::new(HostPanicked(first))
}

/// Run a guest call, turning a panic that escapes it into an error.
fn guarded<T>(f: impl FnOnce() -> wasmtime::Result<T>) -> wasmtime::Result<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|p| Err(host_panic(p)))
}

/// Charge the fuel host functions owe (work done on the guest's behalf) when
/// they return to the guest; a call that cannot pay traps with `OutOfFuel`,
/// exactly as if the guest had spent it.
fn charge_host_fuel(
    mut ctx: wasmtime::StoreContextMut<'_, HostState>,
    kind: wasmtime::CallHook,
) -> wasmtime::Result<()> {
    if !matches!(kind, wasmtime::CallHook::ReturningFromHost) {
        return Ok(());
    }
    let owed = std::mem::take(&mut ctx.data_mut().call.host_fuel);
    if owed == 0 {
        return Ok(());
    }
    let left = ctx.get_fuel()?;
    if owed > left {
        ctx.set_fuel(0)?;
        return Err(wasmtime::Trap::OutOfFuel.into());
    }
    ctx.set_fuel(left - owed)
}

/// Turn a wasmtime error from a guest call into a typed kind.
fn classify(store: &Store<HostState>, cpu: CpuLimit, e: &wasmtime::Error) -> HookErrorKind {
    if let Some(p) = e.downcast_ref::<HostPanicked>() {
        return HookErrorKind::HostPanic {
            message: p.0.clone(),
        };
    }
    let d = store.data();
    if let Some(cap) = e
        .downcast_ref::<Denied>()
        .map(|d| d.0.clone())
        .or_else(|| d.denied.clone())
    {
        return HookErrorKind::CapabilityDenied { capability: cap };
    }
    if d.limiter.memory_hit {
        return HookErrorKind::MemoryLimit {
            limit_bytes: d.limiter.max_memory_bytes as u64,
        };
    }
    if d.limiter.table_hit {
        return HookErrorKind::ResourceLimit(format!(
            "table grew beyond {} elements",
            d.limiter.max_table_elements
        ));
    }
    let printed = d.stdio.text();
    match e.downcast_ref::<wasmtime::Trap>() {
        Some(wasmtime::Trap::OutOfFuel) => {
            let budget = match cpu {
                CpuLimit::Fuel(n) => n,
                _ => 0,
            };
            HookErrorKind::OutOfFuel { budget }
        }
        Some(wasmtime::Trap::Interrupt) => HookErrorKind::DeadlineExceeded {
            limit: match cpu {
                CpuLimit::Deadline(d) => d,
                _ => Default::default(),
            },
        },
        Some(wasmtime::Trap::StackOverflow) => HookErrorKind::StackOverflow,
        Some(wasmtime::Trap::UnreachableCodeReached)
            if printed.contains("panicked") || printed.contains("Traceback") =>
        {
            HookErrorKind::Panic {
                message: printed.trim().to_string(),
            }
        }
        _ => {
            let mut message = TrapText(e).to_string();
            if !printed.trim().is_empty() {
                message.push_str(&format!("; guest output: {}", printed.trim()));
            }
            HookErrorKind::Trap { message }
        }
    }
}

/// Reset per-call limits and flags before entering the guest.
fn arm(store: &mut Store<HostState>, cpu: CpuLimit, deadline_ticks: u64) {
    match cpu {
        CpuLimit::Fuel(n) => {
            let _ = store.set_fuel(n);
        }
        CpuLimit::Deadline(_) => store.set_epoch_deadline(deadline_ticks),
        CpuLimit::Unlimited => {}
    }
    let d = store.data_mut();
    d.limiter.memory_hit = false;
    d.limiter.table_hit = false;
    d.denied = None;
    d.env_read = false;
    d.stdio.clear();
}
