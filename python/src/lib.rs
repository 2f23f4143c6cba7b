//! `flexmodel._native`: the engine for Python (PyO3). Tensors cross as
//! torch tensors without copies (pyo3-tch: the extension links the same
//! libtorch the interpreter's `torch` loaded). The Python package
//! (`python/flexmodel/__init__.py`) wraps this with TransformerLens-style
//! names; everything here is what needs the engine.

mod convert;
mod hooks;
mod model;

use std::path::PathBuf;

use flexmodel::api::{FlexModel, Options};
use pyo3::prelude::*;

use convert::{FlexModelError, device_of, err, interrupt, kind_of};

/// Run `f` with the GIL released, so that Python hooks called from rank
/// threads can take it (and other Python threads run meanwhile).
/// `allow_threads` runs `f` on this same thread; its `Send` bound only
/// stands in for "touches nothing of Python's", which `f` does not (Python
/// hooks and the interrupt take the GIL themselves), so the engine need not
/// be `Send`.
pub(crate) fn released<R>(py: Python<'_>, f: impl FnOnce() -> R) -> R {
    struct Pass<T>(T);
    // SAFETY: never sent to another thread (see above).
    unsafe impl<T> Send for Pass<T> {}
    let f = Pass(f);
    py.allow_threads(move || {
        let g = f;
        Pass((g.0)())
    })
    .0
}

/// Load a Hugging Face model folder on `tp` × `pp` × `dp` ranks (threads).
#[pyfunction]
#[pyo3(signature = (path, dtype = "f32", device = "cpu", tp = 1, pp = 1, dp = 1))]
fn load(
    py: Python<'_>,
    path: PathBuf,
    dtype: &str,
    device: &str,
    tp: usize,
    pp: usize,
    dp: usize,
) -> PyResult<model::Model> {
    let mut opts = Options::new(pp, dp, tp).map_err(err)?;
    opts.kind = kind_of(dtype)?;
    opts.device = device_of(device)?;
    let mut fm = released(py, || FlexModel::load_with(&path, &opts)).map_err(err)?;
    // Ctrl-C ends a pass (KeyboardInterrupt); the model stays usable.
    fm.set_interrupt(Some(interrupt()));
    Ok(model::Model::new(fm))
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(load, m)?)?;
    m.add_class::<model::Model>()?;
    m.add_class::<hooks::Plugin>()?;
    m.add("FlexModelError", m.py().get_type::<FlexModelError>())?;
    Ok(())
}
