//! `flexmodel:hook/tokens` (WIT 0.1.2): the activation's token dimension,
//! the real tokens of a padded batch, and emitting only those.

use tch::Tensor;
use wasmtime::component::Resource;

use super::types::from_wit_slice;
use crate::hooks::activation::ActivationBuf;
use crate::hooks::bindings::flexmodel::hook::tokens::{Host, Span};
use crate::hooks::bindings::wit_types::{DimRange, HookError};
use crate::hooks::slice;
use crate::hooks::store::HostState;

type R<T> = wasmtime::Result<T>;

/// Row `r`'s real tokens `(start, len)` along a token dimension of `size`.
fn row_span(real: Option<&[(u32, u32)]>, r: usize, size: usize) -> (usize, usize) {
    match real.and_then(|s| s.get(r)) {
        Some(&(start, len)) => (start as usize, len as usize),
        None => (0, size),
    }
}

/// Each row's real part of `view` (`[batch, ...]`, tokens along `dim`)
/// sliced by `s` as a batch of one, as views (nothing copied), each
/// `[rows, tokens, ...]` (rows: 1, or 0 if the slice leaves the row out).
fn row_views(
    view: &Tensor,
    dim: usize,
    real: Option<&[(u32, u32)]>,
    s: &[slice::DimRange],
) -> Result<Vec<Tensor>, HookError> {
    let failed = |e: tch::TchError| HookError::Failed(e.to_string());
    let shape: Vec<usize> = view.size().iter().map(|&d| d as usize).collect();
    if dim == 0 || dim >= shape.len() {
        return Err(HookError::InvalidArgument(format!(
            "token dimension {dim} does not fit shape {shape:?}"
        )));
    }
    let mut parts = Vec::with_capacity(shape[0]);
    for r in 0..shape[0] {
        let (start, len) = row_span(real, r, shape[dim]);
        if start + len > shape[dim] {
            return Err(HookError::Failed(format!(
                "row {r}'s real tokens {start}..{} exceed the token dimension {}",
                start + len,
                shape[dim]
            )));
        }
        let row = view
            .f_narrow(0, r as i64, 1)
            .and_then(|t| t.f_narrow(dim as i64, start as i64, len as i64))
            .map_err(failed)?;
        let row_shape: Vec<usize> = row.size().iter().map(|&d| d as usize).collect();
        let resolved =
            slice::resolve(&row_shape, s).map_err(|e| HookError::InvalidArgument(e.0))?;
        let mut v = row;
        for (d, &(start, count, step)) in resolved.dims.iter().enumerate() {
            let stop = start + count.saturating_sub(1) * step + usize::from(count > 0);
            v = v
                .f_slice(d as i64, start as i64, stop as i64, step as i64)
                .map_err(failed)?;
        }
        parts.push(v.f_movedim([dim as i64], [1]).map_err(failed)?);
    }
    Ok(parts)
}

/// The rows' views stacked along their tokens, `[tokens, ...]`, copied once
/// into fresh storage.
fn stack(parts: &[Tensor], kind: tch::Kind) -> Result<Tensor, HookError> {
    let failed = |e: tch::TchError| HookError::Failed(e.to_string());
    let rest: Vec<i64> = parts
        .first()
        .map(|p| p.size()[2..].to_vec())
        .unwrap_or_default();
    let total: i64 = parts.iter().map(|p| p.size()[0] * p.size()[1]).sum();
    let mut shape = vec![total];
    shape.extend(&rest);
    let out = Tensor::f_empty(&shape, (kind, tch::Device::Cpu)).map_err(failed)?;
    let mut at = 0;
    for p in parts {
        let n = p.size()[0] * p.size()[1];
        let mut dst = out
            .f_narrow(0, at, n)
            .and_then(|d| d.f_view(p.size().as_slice()))
            .map_err(failed)?;
        dst.f_copy_(p).map_err(failed)?;
        at += n;
    }
    Ok(out)
}

impl Host for HostState {
    fn token_dim(&mut self) -> R<Option<u32>> {
        self.charge(0);
        Ok(self.call.tokens.as_ref().map(|t| t.dim as u32))
    }

    fn real_tokens(&mut self) -> R<Option<Vec<Span>>> {
        let spans = self
            .call
            .tokens
            .as_ref()
            .and_then(|t| t.real.as_ref())
            .map(|r| {
                r.iter()
                    .map(|&(start, len)| Span { start, len })
                    .collect::<Vec<_>>()
            });
        self.charge(spans.as_ref().map_or(0, |s| s.len() as u64 * 8));
        Ok(spans)
    }

    fn emit_real(
        &mut self,
        name: String,
        act: Resource<ActivationBuf>,
        s: Vec<DimRange>,
    ) -> R<Result<(), HookError>> {
        self.charge((name.len() + s.len() * 24) as u64);
        let Some(tokens) = self.call.tokens.clone() else {
            return Ok(Err(HookError::InvalidArgument(format!(
                "{} has no token dimension",
                self.call.hook_point
            ))));
        };
        let (view, dtype) = {
            let b = self.table.get(&act)?;
            (b.cpu_view(), b.dtype())
        };
        // The per-row work, whatever the call then emits.
        self.charge(view.size().first().map_or(0, |&r| r.max(0) as u64 * 64));
        let r = (|| {
            super::output::check_name(&name)?;
            let parts = row_views(
                &view,
                tokens.dim,
                tokens.real.as_deref(),
                &from_wit_slice(&s),
            )?;
            // Charged before anything is copied.
            let numel: usize = parts.iter().map(|p| p.numel()).sum();
            let bytes = (numel * dtype.size()) as u64;
            self.reserve_output(&name, bytes)?;
            self.charge(bytes);
            let out = stack(&parts, dtype.kind())?;
            self.stage(&name, out);
            Ok(())
        })();
        Ok(r)
    }
}
