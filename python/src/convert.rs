//! What crosses from Python: dtypes, devices, token batches, losses; and
//! the host's errors as Python exceptions.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use flexmodel::api::{Batch, FlexError, FlexModel, Interrupt, Loss, Padding};
use pyo3::exceptions::{PyKeyboardInterrupt, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3_tch::PyTensor;
use tch::{Device, Kind};

pyo3::create_exception!(_native, FlexModelError, pyo3::exceptions::PyException);

/// The error Python's signal handler raised during the last interrupted
/// pass (a `KeyboardInterrupt` for Ctrl-C), raised again when it ends.
static PENDING: Mutex<Option<PyErr>> = Mutex::new(None);

/// Keep `e` (a signal handler's exception) to raise when the pass ends.
pub fn pend(e: PyErr) {
    if let Ok(mut p) = PENDING.lock() {
        *p = Some(e);
    }
}

/// The Python exception of `e`: the pending signal handler's exception if
/// one interrupted the pass (at a hook point, or inside a Python hook),
/// else `FlexModelError` with the host's message.
pub fn err(e: FlexError) -> PyErr {
    if let Some(p) = PENDING.lock().ok().and_then(|mut p| p.take()) {
        return p;
    }
    match e {
        FlexError::Interrupted => PyKeyboardInterrupt::new_err(""),
        e => FlexModelError::new_err(e.to_string()),
    }
}

/// Ctrl-C during a pass: Python's handler only sets a flag while the engine
/// runs (the GIL released), so the engine asks this at its hook points; it
/// takes the GIL and runs the pending signal handlers at most every 10 ms.
/// `check_signals` does nothing off the main thread, where only the caller
/// waits (rank threads never ask it).
pub fn interrupt() -> Interrupt {
    let last = Mutex::new(Instant::now());
    std::sync::Arc::new(move || {
        match last.lock() {
            Ok(mut l) if l.elapsed() >= Duration::from_millis(10) => *l = Instant::now(),
            _ => return false,
        }
        Python::with_gil(|py| match py.check_signals() {
            Ok(()) => false,
            Err(e) => {
                pend(e);
                true
            }
        })
    })
}

pub fn kind_of(dtype: &str) -> PyResult<Kind> {
    match dtype {
        "f32" | "float32" => Ok(Kind::Float),
        "f16" | "float16" => Ok(Kind::Half),
        "bf16" | "bfloat16" => Ok(Kind::BFloat16),
        d => Err(PyValueError::new_err(format!(
            "dtype {d:?}: use f32, f16 or bf16"
        ))),
    }
}

pub fn device_of(device: &str) -> PyResult<Device> {
    match device {
        "cpu" => Ok(Device::Cpu),
        "cuda" => Ok(Device::Cuda(0)),
        d => d
            .strip_prefix("cuda:")
            .and_then(|n| n.parse().ok())
            .map(Device::Cuda)
            .ok_or_else(|| PyValueError::new_err(format!("device {d:?}: use cpu, cuda or cuda:N"))),
    }
}

pub fn padding_of(p: &str) -> PyResult<Padding> {
    match p {
        "right" => Ok(Padding::Right),
        "left" => Ok(Padding::Left),
        p => Err(PyValueError::new_err(format!(
            "padding {p:?}: right or left"
        ))),
    }
}

/// The token batch of `inputs`: a string, a list of strings (a padded
/// batch), a torch tensor of ids (`[seq]` or `[batch, seq]`), or a list of
/// id lists (padded when their lengths differ).
pub fn batch_of(fm: &FlexModel, inputs: &Bound<'_, PyAny>, padding: Padding) -> PyResult<Batch> {
    let ids: Vec<Vec<i64>> = if let Ok(t) = inputs.extract::<PyTensor>() {
        let t = t.0.to_kind(Kind::Int64).to_device(Device::Cpu);
        let t = if t.dim() == 1 { t.unsqueeze(0) } else { t };
        Vec::<Vec<i64>>::try_from(&t).map_err(|e| PyValueError::new_err(format!("ids: {e}")))?
    } else if let Ok(s) = inputs.extract::<String>() {
        vec![encode(fm, &s)?]
    } else if let Ok(v) = inputs.extract::<Vec<String>>() {
        v.iter().map(|s| encode(fm, s)).collect::<PyResult<_>>()?
    } else if let Ok(v) = inputs.extract::<Vec<Vec<i64>>>() {
        v
    } else {
        return Err(PyTypeError::new_err(
            "inputs: a string, a list of strings, a torch.Tensor of ids or a list of id lists",
        ));
    };
    Batch::pad(&ids, padding, 0).map_err(err)
}

fn encode(fm: &FlexModel, s: &str) -> PyResult<Vec<i64>> {
    let tok = fm.tokenizer().ok_or_else(|| {
        FlexModelError::new_err("this model folder has no tokenizer.json: pass token ids")
    })?;
    tok.encode(s)
        .map_err(|e| FlexModelError::new_err(format!("tokenizing: {e}")))
}

/// A loss: `("cross_entropy", targets)` (int64 `[batch, seq]`) or
/// `("logit_diff", position, plus, minus)`.
pub fn loss_of(loss: &Bound<'_, PyAny>) -> PyResult<Loss> {
    let bad = || {
        PyTypeError::new_err(
            "loss: (\"cross_entropy\", targets) or (\"logit_diff\", position, plus, minus)",
        )
    };
    let what: String = loss
        .get_item(0)
        .and_then(|w| w.extract())
        .map_err(|_| bad())?;
    match what.as_str() {
        "cross_entropy" => {
            let (_, t): (String, PyTensor) = loss.extract().map_err(|_| bad())?;
            Ok(Loss::CrossEntropy {
                targets: t.0.to_kind(Kind::Int64).to_device(Device::Cpu),
            })
        }
        "logit_diff" => {
            let (_, position, plus, minus): (String, i64, i64, i64) =
                loss.extract().map_err(|_| bad())?;
            Ok(Loss::LogitDiff {
                position,
                plus,
                minus,
            })
        }
        _ => Err(bad()),
    }
}
