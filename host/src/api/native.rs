//! Native Rust hooks: a closure behind the same [`Hook`] trait as WASM
//! plugins (for Rust users, and to measure what the sandbox costs).
//!
//! Native hooks run in the host process, unsandboxed: a failing closure's
//! partial in-place edits are not undone. Use WASM plugins for untrusted code.

use tch::Tensor;

use crate::hooks::{
    Access, CallContext, CallReport, EditMode, Emitted, Hook, HookError, HookErrorKind, PluginError,
};

type Func = dyn Fn(&CallContext, &mut Tensor, &mut Vec<(String, Tensor)>) -> Result<(), String>
    + Send
    + Sync;

/// A hook made from a closure `f(ctx, activation, outputs)`. The closure may
/// edit the activation in place or replace it (same shape, dtype, device) and
/// push `(name, tensor)` pairs to emit (empty name: the hook point's own).
pub struct FnHook {
    name: String,
    mode: EditMode,
    f: Box<Func>,
}

impl FnHook {
    /// A read-only hook.
    pub fn read_only(
        name: &str,
        f: impl Fn(&CallContext, &Tensor, &mut Vec<(String, Tensor)>) -> Result<(), String>
        + Send
        + Sync
        + 'static,
    ) -> FnHook {
        FnHook {
            name: name.into(),
            mode: EditMode::ReadOnly,
            f: Box::new(move |c, t, o| f(c, t, o)),
        }
    }

    /// A hook that edits (in place or by replacing the tensor).
    pub fn editing(
        name: &str,
        f: impl Fn(&CallContext, &mut Tensor, &mut Vec<(String, Tensor)>) -> Result<(), String>
        + Send
        + Sync
        + 'static,
    ) -> FnHook {
        FnHook {
            name: name.into(),
            mode: EditMode::InPlace,
            f: Box::new(f),
        }
    }
}

impl Hook for FnHook {
    fn name(&self) -> &str {
        &self.name
    }

    fn access(&self) -> Access {
        Access {
            mode: self.mode,
            reads: None,
        }
    }

    fn call(&self, ctx: &CallContext, activation: &mut Tensor) -> Result<CallReport, HookError> {
        let err = |kind| HookError {
            plugin: self.name.clone(),
            hook_point: ctx.hook_point.clone(),
            rank: ctx.rank.global_rank,
            kind,
        };
        let (shape, kind, device) = (activation.size(), activation.kind(), activation.device());
        let mut out = Vec::new();
        (self.f)(ctx, activation, &mut out)
            .map_err(|m| err(HookErrorKind::Plugin(PluginError::Failed(m))))?;
        if activation.size() != shape || activation.kind() != kind || activation.device() != device
        {
            return Err(err(HookErrorKind::BadActivation {
                message: format!(
                    "the hook changed the activation from {shape:?} {kind:?} on {device:?} to {:?} {:?} on {:?}",
                    activation.size(),
                    activation.kind(),
                    activation.device()
                ),
            }));
        }
        let emitted = out
            .into_iter()
            .map(|(name, t)| Emitted {
                key: crate::hooks::hook::output_key(&ctx.hook_point, &name),
                tensor: t.detach().to_device(tch::Device::Cpu).copy(),
            })
            .collect();
        Ok(CallReport {
            emitted,
            logs: vec![],
            non_finite_written: 0,
            edited: self.mode.writes(),
        })
    }
}
