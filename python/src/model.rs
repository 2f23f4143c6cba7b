//! `flexmodel._native.Model`: a model on one rank or a mesh of threads,
//! driven from Python (the package's `flexmodel.Model` wraps it).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use flexmodel::api::{FlexModel, GenerateOptions, Groups, Padding, Sampling};
use flexmodel::hooks::Hook;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3_tch::PyTensor;
use tch::Tensor;

use crate::convert::{FlexModelError, batch_of, err, loss_of, padding_of};
use crate::hooks::{Registered, cache_hook};
use crate::released;

type Tensors = BTreeMap<String, PyTensor>;

fn tensors(m: BTreeMap<String, Tensor>) -> Tensors {
    m.into_iter().map(|(k, v)| (k, PyTensor(v))).collect()
}

/// A model loaded on one rank or a mesh of ranks (threads).
#[pyclass(module = "flexmodel._native", unsendable)]
pub struct Model {
    pub fm: FlexModel,
    /// Hooks of open `with model.hooks(...)` blocks, by block.
    scopes: HashMap<u64, Registered>,
    next_scope: u64,
}

impl Model {
    pub fn new(fm: FlexModel) -> Model {
        Model {
            fm,
            scopes: HashMap::new(),
            next_scope: 0,
        }
    }

    /// Register this call's hooks, run `f`, and remove them again (also
    /// when registering or `f` failed).
    fn with_hooks<R>(
        &mut self,
        add: impl FnOnce(&mut FlexModel, &mut Registered) -> PyResult<()>,
        f: impl FnOnce(&mut FlexModel) -> PyResult<R>,
    ) -> PyResult<R> {
        let mut reg = Registered::default();
        let r = add(&mut self.fm, &mut reg).and_then(|_| f(&mut self.fm));
        reg.remove(&mut self.fm);
        r
    }
}

fn all_or(filter: Option<Vec<String>>) -> Vec<String> {
    filter.unwrap_or_else(|| vec!["**".into()])
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
    ) -> PyResult<(Option<PyTensor>, Tensors)> {
        let batch = batch_of(&self.fm, inputs, padding_of(padding)?)?;
        let cache: Arc<dyn Hook> = Arc::new(cache_hook());
        let patterns = all_or(names_filter);
        let (logits, outputs) = self.with_hooks(
            |fm, reg| reg.add_native(fm, cache, &patterns, false),
            |fm| {
                released(py, || match &stop_at {
                    Some(s) => fm
                        .forward_until(&batch, &Groups::All, s)
                        .map(|o| (None, o.outputs)),
                    None => fm
                        .forward(&batch, &Groups::All)
                        .map(|o| (Some(o.logits), o.outputs)),
                })
                .map_err(err)
            },
        )?;
        Ok((logits.map(PyTensor), tensors(outputs)))
    }

    /// Logits with `fwd_hooks` (a list of `(pattern, hook)`: a `Plugin` or
    /// a Python callable `fn(tensor, hook_point) -> tensor | None`) and what
    /// the plugins emitted.
    #[pyo3(signature = (inputs, fwd_hooks = None, padding = "right"))]
    fn run_with_hooks(
        &mut self,
        py: Python<'_>,
        inputs: &Bound<'_, PyAny>,
        fwd_hooks: Option<&Bound<'_, PyAny>>,
        padding: &str,
    ) -> PyResult<(PyTensor, Tensors)> {
        let batch = batch_of(&self.fm, inputs, padding_of(padding)?)?;
        let o = self.with_hooks(
            |fm, reg| reg.add(fm, fwd_hooks, false, "py-hooks"),
            |fm| released(py, || fm.forward(&batch, &Groups::All)).map_err(err),
        )?;
        Ok((PyTensor(o.logits), tensors(o.outputs)))
    }

    /// A forward and a backward pass of `loss` with `fwd_hooks` and
    /// `bwd_hooks` (called on gradients; their edits flow further back);
    /// the gradient at every point `grad_filter` selects. Returns (loss,
    /// logits, forward outputs, gradients and backward hooks' outputs,
    /// parameter gradients).
    #[pyo3(signature = (inputs, loss, fwd_hooks = None, bwd_hooks = None, grad_filter = None, padding = "right"))]
    #[allow(clippy::too_many_arguments, clippy::type_complexity)]
    fn backward(
        &mut self,
        py: Python<'_>,
        inputs: &Bound<'_, PyAny>,
        loss: &Bound<'_, PyAny>,
        fwd_hooks: Option<&Bound<'_, PyAny>>,
        bwd_hooks: Option<&Bound<'_, PyAny>>,
        grad_filter: Option<Vec<String>>,
        padding: &str,
    ) -> PyResult<(f64, PyTensor, Tensors, Tensors, Tensors)> {
        let batch = batch_of(&self.fm, inputs, padding_of(padding)?)?;
        let loss = loss_of(loss)?;
        let cache: Arc<dyn Hook> = Arc::new(cache_hook());
        let o = self.with_hooks(
            |fm, reg| {
                reg.add(fm, fwd_hooks, false, "py-hooks")?;
                reg.add(fm, bwd_hooks, true, "py-hooks")?;
                match &grad_filter {
                    Some(p) => reg.add_native(fm, cache, p, true),
                    None => Ok(()),
                }
            },
            |fm| released(py, || fm.backward(&batch, &Groups::All, &loss)).map_err(err),
        )?;
        Ok((
            o.loss,
            PyTensor(o.logits),
            tensors(o.outputs),
            tensors(o.grad_outputs),
            tensors(o.param_grads),
        ))
    }

    /// Up to `max_new_tokens` tokens after each prompt (padded on the left),
    /// greedy or sampled, stopping at the model's end-of-sequence tokens
    /// unless `ignore_eos`; `fwd_hooks` fire at every step; the activations
    /// at `names_filter`'s points are kept per step (`step{k}/<point>`).
    /// Returns (tokens `[batch, prompt + new]`, each prompt's new tokens,
    /// outputs).
    #[pyo3(signature = (inputs, max_new_tokens = 16, fwd_hooks = None, names_filter = None,
                        do_sample = false, temperature = 1.0, top_k = None, seed = 0, ignore_eos = false))]
    #[allow(clippy::too_many_arguments)]
    fn generate(
        &mut self,
        py: Python<'_>,
        inputs: &Bound<'_, PyAny>,
        max_new_tokens: usize,
        fwd_hooks: Option<&Bound<'_, PyAny>>,
        names_filter: Option<Vec<String>>,
        do_sample: bool,
        temperature: f64,
        top_k: Option<i64>,
        seed: u64,
        ignore_eos: bool,
    ) -> PyResult<(PyTensor, Vec<Vec<i64>>, Tensors)> {
        let batch = batch_of(&self.fm, inputs, Padding::Left)?;
        let opts = GenerateOptions {
            max_new_tokens,
            sampling: if do_sample {
                Sampling::Sample {
                    temperature,
                    top_k,
                    seed,
                }
            } else {
                Sampling::Greedy
            },
            eos: if ignore_eos {
                Vec::new()
            } else {
                self.fm.eos_tokens().to_vec()
            },
            ..GenerateOptions::default()
        };
        let cache: Arc<dyn Hook> = Arc::new(cache_hook());
        let o = self.with_hooks(
            |fm, reg| {
                reg.add(fm, fwd_hooks, false, "py-hooks")?;
                match &names_filter {
                    Some(p) => reg.add_native(fm, cache, p, false),
                    None => Ok(()),
                }
            },
            |fm| released(py, || fm.generate(&batch, &Groups::All, &opts, |_, _| {})).map_err(err),
        )?;
        Ok((PyTensor(o.tokens), o.new_tokens, tensors(o.outputs)))
    }

    /// Register hooks until `remove_hooks` (`with model.hooks(...)`): they
    /// fire in every later pass. Returns the block's handle.
    #[pyo3(signature = (fwd_hooks = None, bwd_hooks = None))]
    fn add_hooks(
        &mut self,
        fwd_hooks: Option<&Bound<'_, PyAny>>,
        bwd_hooks: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<u64> {
        let mut reg = Registered::default();
        let added = reg
            .add(&mut self.fm, fwd_hooks, false, "py-scope")
            .and_then(|_| reg.add(&mut self.fm, bwd_hooks, true, "py-scope"));
        if let Err(e) = added {
            reg.remove(&mut self.fm);
            return Err(e);
        }
        let id = self.next_scope;
        self.next_scope += 1;
        self.scopes.insert(id, reg);
        Ok(id)
    }

    /// Remove the hooks `add_hooks` registered; false if already removed.
    fn remove_hooks(&mut self, id: u64) -> bool {
        match self.scopes.remove(&id) {
            Some(reg) => {
                reg.remove(&mut self.fm);
                true
            }
            None => false,
        }
    }

    /// Token ids of `text` (the model folder's tokenizer).
    fn to_tokens(&self, text: &str) -> PyResult<Vec<i64>> {
        let tok = self
            .fm
            .tokenizer()
            .ok_or_else(|| FlexModelError::new_err("this model folder has no tokenizer.json"))?;
        tok.encode(text)
            .map_err(|e| FlexModelError::new_err(format!("tokenizing: {e}")))
    }

    /// The text of token ids.
    fn to_string(&self, ids: Vec<i64>) -> PyResult<String> {
        let tok = self
            .fm
            .tokenizer()
            .ok_or_else(|| FlexModelError::new_err("this model folder has no tokenizer.json"))?;
        if let Some(bad) = ids.iter().find(|&&i| i < 0 || i >= self.fm.vocab_size()) {
            return Err(PyValueError::new_err(format!(
                "token id {bad} is not in the vocabulary"
            )));
        }
        Ok(tok.decode(&ids))
    }

    /// The model's end-of-sequence tokens.
    #[getter]
    fn eos_tokens(&self) -> Vec<i64> {
        self.fm.eos_tokens().to_vec()
    }

    /// dtype, device and mesh, as `load` took them.
    #[getter]
    fn layout(&self) -> String {
        let o = self.fm.options();
        format!(
            "dtype={:?}, device={:?}, tp={}, pp={}, dp={}",
            o.kind, o.device, o.mesh.tp, o.mesh.pp, o.mesh.dp
        )
    }

    /// Its vocabulary size.
    #[getter]
    fn vocab_size(&self) -> i64 {
        self.fm.vocab_size()
    }
}
