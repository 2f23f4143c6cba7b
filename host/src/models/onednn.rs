//! Linear layers through oneDNN (libtorch's `mkldnn_linear`) for f32 on the
//! CPU: the weight is reordered once, at load, into oneDNN's blocked layout,
//! which on this machine runs the GEMMs of a GPT-2-small forward in 0.54–0.9×
//! the time of the same `linear` on the plain weight (the LM head the most;
//! see BENCHMARKS.md). The plain weight is not kept beside it (see
//! `weight.rs`). Set `FLEXMODEL_NO_ONEDNN=1` to load without it. Anything unsupported (other
//! dtypes, devices, tensors that need gradients, a failing conversion) uses
//! the plain path.

use tch::{Device, Kind, Tensor};

/// A weight (and bias) in oneDNN's layout, for `x @ w.T + b`.
pub(crate) struct Packed {
    w: Tensor,
    b: Option<Tensor>,
    out: i64,
}

fn enabled() -> bool {
    std::env::var_os("FLEXMODEL_NO_ONEDNN").is_none()
}

/// Pack `w` (`[out, in]`) and `b`, or `None` where oneDNN is not used.
pub(crate) fn pack(w: &Tensor, b: Option<&Tensor>) -> Option<Packed> {
    if !enabled() || w.kind() != Kind::Float || w.device() != Device::Cpu || w.dim() != 2 {
        return None;
    }
    let pw = w.contiguous().f_to_mkldnn(Kind::Float).ok()?;
    let pb = match b {
        Some(b) => Some(b.contiguous().f_to_mkldnn(Kind::Float).ok()?),
        None => None,
    };
    Some(Packed {
        w: pw,
        b: pb,
        out: w.size()[0],
    })
}

/// The plain `[out, in]` weight of `p` (a new tensor).
pub(crate) fn dense(p: &Packed) -> Tensor {
    p.w.to_dense(None, false)
}

/// `x @ w.T + b` through oneDNN, or `None` (use the plain path) when `x` is
/// not a plain f32 CPU tensor or needs gradients.
pub(crate) fn linear(x: &Tensor, p: &Packed) -> Option<Tensor> {
    run(x, p, true)
}

/// `x @ w.T` (no bias: a row-parallel rank's partial product), or `None`.
pub(crate) fn matmul(x: &Tensor, p: &Packed) -> Option<Tensor> {
    run(x, p, false)
}

fn run(x: &Tensor, p: &Packed, bias: bool) -> Option<Tensor> {
    if x.kind() != Kind::Float || x.device() != Device::Cpu || x.requires_grad() {
        return None;
    }
    let mut shape = x.size();
    let inner = shape.pop()?;
    let x2 = x
        .reshape([-1, inner])
        .contiguous()
        .f_to_mkldnn(Kind::Float)
        .ok()?;
    let b = if bias { p.b.as_ref() } else { None };
    let y = x2.f_mkldnn_linear(&p.w, b).ok()?;
    shape.push(p.out);
    y.f_to_dense(None, false)
        .ok()?
        .f_view(shape.as_slice())
        .ok()
}
