//! `flexmodel._native`: the engine for Python (PyO3). Tensors cross as
//! torch tensors without copies (pyo3-tch: the extension links the same
//! libtorch the interpreter's `torch` loaded). The Python package
//! (`python/flexmodel/__init__.py`) wraps this with TransformerLens-style
//! names; everything here is what needs the engine.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use flexmodel::api::{Batch, FlexError, FlexModel, FnHook, Groups, HookHandle, Options, Padding};
use flexmodel::hooks::{Hook, Runtime, RuntimeConfig};
use flexmodel::models::PointPattern;
use pyo3::exceptions::{PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyList, PyString};
use pyo3_tch::PyTensor;
use tch::{Device, Kind, Tensor};

pyo3::create_exception!(_native, FlexModelError, pyo3::exceptions::PyException);

/// Run `f` with the GIL released, so that Python hooks called from rank
/// threads can take it (and other Python threads run meanwhile).
/// `allow_threads` runs `f` on this same thread; its `Send` bound only
/// stands in for "touches nothing of Python's", which `f` does not (Python
/// hooks take the GIL themselves), so the engine need not be `Send`.
fn released<R>(py: Python<'_>, f: impl FnOnce() -> R) -> R {
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

fn err(e: FlexError) -> PyErr {
    FlexModelError::new_err(e.to_string())
}

fn kind_of(dtype: &str) -> PyResult<Kind> {
    match dtype {
        "f32" | "float32" => Ok(Kind::Float),
        "f16" | "float16" => Ok(Kind::Half),
        "bf16" | "bfloat16" => Ok(Kind::BFloat16),
        d => Err(PyValueError::new_err(format!(
            "dtype {d:?}: use f32, f16 or bf16"
        ))),
    }
}

fn device_of(device: &str) -> PyResult<Device> {
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

/// A WebAssembly hook plugin and its configuration.
#[pyclass(module = "flexmodel._native")]
struct Plugin {
    plugin: Arc<flexmodel::hooks::Plugin>,
    config: String,
}

#[pymethods]
impl Plugin {
    #[new]
    #[pyo3(signature = (path, config = None))]
    fn new(py: Python<'_>, path: PathBuf, config: Option<&Bound<'_, PyAny>>) -> PyResult<Plugin> {
        let config = match config {
            None => "{}".to_string(),
            Some(c) if c.is_instance_of::<PyString>() => c.extract()?,
            Some(c) => py.import("json")?.call_method1("dumps", (c,))?.extract()?,
        };
        let plugin = runtime()?
            .load_file(&path)
            .map_err(|e| FlexModelError::new_err(format!("{}: {e}", path.display())))?;
        Ok(Plugin { plugin, config })
    }

    #[getter]
    fn name(&self) -> String {
        self.plugin.info.name.clone()
    }

    fn __repr__(&self) -> String {
        format!(
            "Plugin({}@{}, config={})",
            self.plugin.info.name, self.plugin.info.version, self.config
        )
    }
}

/// One runtime per process: plugins compiled once, cached on disk.
fn runtime() -> PyResult<Arc<Runtime>> {
    static RT: std::sync::OnceLock<Arc<Runtime>> = std::sync::OnceLock::new();
    if let Some(r) = RT.get() {
        return Ok(r.clone());
    }
    let cache =
        std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/flexmodel/python-cwasm"));
    let rt = Runtime::new(RuntimeConfig {
        cache_dir: cache,
        ..RuntimeConfig::default()
    })
    .map_err(|e| PyRuntimeError::new_err(format!("hook runtime: {e}")))?;
    Ok(RT.get_or_init(|| rt).clone())
}

/// A model loaded on one rank or a mesh of ranks (threads).
#[pyclass(module = "flexmodel._native", unsendable)]
struct Model {
    fm: FlexModel,
}

/// The token batch of `inputs`: a string, a list of strings (a padded
/// batch), a torch tensor of ids (`[seq]` or `[batch, seq]`), or a list of
/// id lists (padded when their lengths differ).
fn batch_of(fm: &FlexModel, inputs: &Bound<'_, PyAny>, padding: Padding) -> PyResult<Batch> {
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

fn padding_of(p: &str) -> PyResult<Padding> {
    match p {
        "right" => Ok(Padding::Right),
        "left" => Ok(Padding::Left),
        p => Err(PyValueError::new_err(format!(
            "padding {p:?}: right or left"
        ))),
    }
}

/// A Python callable as a native hook: `fn(tensor, hook)` gets the live
/// activation (a torch tensor sharing its storage) and the hook point's
/// name; it may edit the tensor in place or return a replacement.
fn python_hook(f: Py<PyAny>, label: String) -> FnHook {
    FnHook::editing(&label, move |ctx, t, _| {
        Python::with_gil(|py| {
            let arg = PyTensor(t.shallow_clone());
            let r = f
                .call1(py, (arg, ctx.hook_point.clone()))
                .map_err(|e| format!("{e}"))?;
            if r.is_none(py) {
                return Ok(());
            }
            let new: PyTensor = r
                .extract(py)
                .map_err(|_| "a Python hook returns a tensor or None".to_string())?;
            if new.0.size() != t.size() {
                return Err(format!(
                    "a Python hook returned shape {:?} for an activation of shape {:?}",
                    new.0.size(),
                    t.size()
                ));
            }
            t.copy_(&new.0);
            Ok(())
        })
    })
}

/// A hook that keeps each activation it is called on (real tokens only in
/// a padded batch: `[tokens, ...]`). As TransformerLens' cache, it keeps
/// the tensor itself, no copy: nothing writes to an activation after its
/// hooks ran, and only these read-only hooks run in `run_with_cache`.
fn cache_hook() -> FnHook {
    FnHook::read_only("cache", |ctx, t, out| {
        let t = t.detach();
        let kept = match ctx.tokens.as_ref().and_then(|k| k.real.clone()) {
            Some(spans) if t.dim() >= 2 && spans.len() as i64 == t.size()[0] => {
                let rows: Vec<Tensor> = spans
                    .iter()
                    .enumerate()
                    .map(|(r, &(s, l))| t.get(r as i64).narrow(0, i64::from(s), i64::from(l)))
                    .collect();
                Tensor::cat(&rows, 0)
            }
            _ => t,
        };
        out.push((String::new(), kept));
        Ok(())
    })
}

#[pymethods]
impl Model {
    /// Every hook point for a batch of one and `seq_len` tokens: (name,
    /// aliases, shape).
    #[pyo3(signature = (seq_len = 8))]
    fn hook_points(&self, seq_len: i64) -> Vec<(String, Vec<String>, Vec<i64>)> {
        self.fm
            .points(1, seq_len)
            .into_iter()
            .map(|p| {
                let mut aliases = Vec::new();
                if !p.alias.is_empty() {
                    aliases.push(p.alias.clone());
                }
                aliases.extend(p.aliases.iter().cloned());
                (p.name, aliases, p.shape)
            })
            .collect()
    }

    /// Logits (None when stopped early) and the activations at every point
    /// `names_filter` selects (patterns, names or aliases; all by default).
    #[pyo3(signature = (inputs, names_filter = None, stop_at = None, padding = "right"))]
    fn run_with_cache(
        &mut self,
        py: Python<'_>,
        inputs: &Bound<'_, PyAny>,
        names_filter: Option<Vec<String>>,
        stop_at: Option<String>,
        padding: &str,
    ) -> PyResult<(Option<PyTensor>, BTreeMap<String, PyTensor>)> {
        let batch = batch_of(&self.fm, inputs, padding_of(padding)?)?;
        let patterns = names_filter.unwrap_or_else(|| vec!["**".into()]);
        let hook: Arc<dyn Hook> = Arc::new(cache_hook());
        let mut handles: Vec<HookHandle> = Vec::new();
        let registered: PyResult<()> = patterns.iter().try_for_each(|p| {
            handles.push(
                self.fm
                    .register(hook.clone(), p, &["py-cache"])
                    .map_err(err)?,
            );
            Ok(())
        });
        let fm = &mut self.fm;
        let run = registered.and_then(|_| {
            released(py, || match &stop_at {
                Some(s) => fm
                    .forward_until(&batch, &Groups::All, s)
                    .map(|o| (None, o.outputs)),
                None => fm
                    .forward(&batch, &Groups::All)
                    .map(|o| (Some(o.logits), o.outputs)),
            })
            .map_err(err)
        });
        for h in handles {
            self.fm.remove(h);
        }
        let (logits, outputs) = run?;
        Ok((
            logits.map(PyTensor),
            outputs.into_iter().map(|(k, v)| (k, PyTensor(v))).collect(),
        ))
    }

    /// Logits with `fwd_hooks` (a list of `(pattern, hook)`: a `Plugin` or
    /// a Python callable `fn(tensor, hook_point) -> tensor | None`) and what
    /// the plugins emitted.
    #[pyo3(signature = (inputs, fwd_hooks, padding = "right"))]
    fn run_with_hooks(
        &mut self,
        py: Python<'_>,
        inputs: &Bound<'_, PyAny>,
        fwd_hooks: &Bound<'_, PyList>,
        padding: &str,
    ) -> PyResult<(PyTensor, BTreeMap<String, PyTensor>)> {
        let batch = batch_of(&self.fm, inputs, padding_of(padding)?)?;
        let mut handles = Vec::new();
        let mut result: PyResult<()> = Ok(());
        for item in fwd_hooks.iter() {
            let reg = (|| -> PyResult<HookHandle> {
                let (pattern, hook): (String, Bound<'_, PyAny>) = item.extract()?;
                if let Ok(p) = hook.downcast::<Plugin>() {
                    let p = p.borrow();
                    return self
                        .fm
                        .register_wasm(&p.plugin, &pattern, &p.config, &["py-hooks"])
                        .map_err(err);
                }
                if !hook.is_callable() {
                    return Err(PyTypeError::new_err(
                        "a hook is a flexmodel.Plugin or a callable",
                    ));
                }
                let name = hook
                    .getattr("__name__")
                    .and_then(|n| n.extract::<String>())
                    .unwrap_or_else(|_| "python".into());
                PointPattern::new(&pattern).map_err(|e| err(e.into()))?;
                let h: Arc<dyn Hook> = Arc::new(python_hook(hook.unbind(), name));
                self.fm.register(h, &pattern, &["py-hooks"]).map_err(err)
            })();
            match reg {
                Ok(h) => handles.push(h),
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        let fm = &mut self.fm;
        let run =
            result.and_then(|_| released(py, || fm.forward(&batch, &Groups::All)).map_err(err));
        for h in handles {
            self.fm.remove(h);
        }
        let o = run?;
        Ok((
            PyTensor(o.logits),
            o.outputs
                .into_iter()
                .map(|(k, v)| (k, PyTensor(v)))
                .collect(),
        ))
    }
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
) -> PyResult<Model> {
    let mut opts = Options::new(pp, dp, tp).map_err(err)?;
    opts.kind = kind_of(dtype)?;
    opts.device = device_of(device)?;
    let fm = released(py, || FlexModel::load_with(&path, &opts)).map_err(err)?;
    Ok(Model { fm })
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(load, m)?)?;
    m.add_class::<Model>()?;
    m.add_class::<Plugin>()?;
    m.add("FlexModelError", m.py().get_type::<FlexModelError>())?;
    Ok(())
}
