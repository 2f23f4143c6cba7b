//! Hooks from Python: WASM plugins (`flexmodel.Plugin`), Python callables
//! run natively, and the read-only hook behind `run_with_cache`.

use std::path::PathBuf;
use std::sync::Arc;

use flexmodel::api::{FlexModel, FnHook, HookHandle};
use flexmodel::hooks::{Hook, Runtime, RuntimeConfig};
use flexmodel::models::PointPattern;
use pyo3::exceptions::{PyKeyboardInterrupt, PyRuntimeError, PyTypeError};
use pyo3::prelude::*;
use pyo3::types::PyString;
use pyo3_tch::PyTensor;
use tch::Tensor;

use crate::convert::{FlexModelError, err};

/// A WebAssembly hook plugin and its configuration.
#[pyclass(module = "flexmodel._native")]
pub struct Plugin {
    plugin: Arc<flexmodel::hooks::Plugin>,
    config: String,
    path: PathBuf,
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
        Ok(Plugin {
            plugin,
            config,
            path,
        })
    }

    /// The plugin's name (from its `info`).
    #[getter]
    fn name(&self) -> String {
        self.plugin.info.name.clone()
    }

    /// Its version (from its `info`).
    #[getter]
    fn version(&self) -> String {
        self.plugin.info.version.clone()
    }

    /// The component file it was loaded from.
    #[getter]
    fn path(&self) -> PathBuf {
        self.path.clone()
    }

    /// Its configuration, as JSON text.
    #[getter]
    fn config(&self) -> String {
        self.config.clone()
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

/// A Python callable as a native hook: `fn(tensor, hook)` gets the live
/// activation (a torch tensor sharing its storage; the gradient for a
/// backward hook) and the hook point's name; it may edit the tensor in
/// place or return a replacement.
fn python_hook(f: Py<PyAny>, label: String) -> FnHook {
    FnHook::editing(&label, move |ctx, t, _| {
        Python::with_gil(|py| {
            let arg = PyTensor(t.shallow_clone());
            let r = f.call1(py, (arg, ctx.hook_point.clone())).map_err(|e| {
                let msg = format!("{e}");
                // Ctrl-C while the hook ran: the pass fails here, and the
                // caller raises the KeyboardInterrupt itself (not a hook error).
                if e.is_instance_of::<PyKeyboardInterrupt>(py) {
                    crate::convert::pend(e);
                }
                msg
            })?;
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

/// A hook that keeps each activation (or gradient) it is called on (real
/// tokens only in a padded batch: `[tokens, ...]`). As TransformerLens'
/// cache, it keeps the tensor itself, no copy: nothing writes to an
/// activation after its hooks ran, and this hook is registered last.
pub fn cache_hook() -> FnHook {
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

/// Hooks registered for one call (or one `with model.hooks(...)` block),
/// removed together.
#[derive(Default)]
pub struct Registered(pub Vec<HookHandle>);

impl Registered {
    /// Register every `(pattern, hook)` of `hooks` (a `Plugin` or a
    /// callable) as forward or `backward` hooks tagged `group`; on an error
    /// nothing of `hooks` stays registered.
    pub fn add(
        &mut self,
        fm: &mut FlexModel,
        hooks: Option<&Bound<'_, PyAny>>,
        backward: bool,
        group: &str,
    ) -> PyResult<()> {
        let Some(hooks) = hooks else {
            return Ok(());
        };
        let mut mine = Vec::new();
        let added: PyResult<()> = (|| {
            for item in hooks.try_iter()? {
                mine.push(register(fm, &item?, backward, group)?);
            }
            Ok(())
        })();
        if added.is_err() {
            for h in mine {
                fm.remove(h);
            }
            return added;
        }
        self.0.extend(mine);
        Ok(())
    }

    /// `hook` on every point of `patterns` (a read-only native hook).
    pub fn add_native(
        &mut self,
        fm: &mut FlexModel,
        hook: Arc<dyn Hook>,
        patterns: &[String],
        backward: bool,
    ) -> PyResult<()> {
        for p in patterns {
            let h = if backward {
                fm.register_backward(hook.clone(), p, &["py-cache"])
            } else {
                fm.register(hook.clone(), p, &["py-cache"])
            };
            self.0.push(h.map_err(err)?);
        }
        Ok(())
    }

    pub fn remove(self, fm: &mut FlexModel) {
        for h in self.0 {
            fm.remove(h);
        }
    }
}

fn register(
    fm: &mut FlexModel,
    item: &Bound<'_, PyAny>,
    backward: bool,
    group: &str,
) -> PyResult<HookHandle> {
    let (pattern, hook): (String, Bound<'_, PyAny>) = item
        .extract()
        .map_err(|_| PyTypeError::new_err("hooks are (pattern, hook) pairs"))?;
    if let Ok(p) = hook.downcast::<Plugin>() {
        let p = p.borrow();
        let r = if backward {
            fm.register_wasm_backward(&p.plugin, &pattern, &p.config, &[group])
        } else {
            fm.register_wasm(&p.plugin, &pattern, &p.config, &[group])
        };
        return r.map_err(err);
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
    let r = if backward {
        fm.register_backward(h, &pattern, &[group])
    } else {
        fm.register(h, &pattern, &[group])
    };
    r.map_err(err)
}
