//! The worker: one thread owning the loaded model, taking queued jobs in
//! order. Each job registers its own hooks (fresh plugin instances and
//! state: nothing is shared between jobs or tenants), runs each prompt,
//! writes its result atomically, and removes its hooks. A failing hook, a
//! trap, a fuel or memory limit fails that job with a typed reason; the
//! worker goes on with the next.

use std::collections::BTreeMap;
use std::sync::{Arc, Condvar, Mutex};

use tch::Tensor;

use super::job::JobRequest;
use super::store::{State, Store};
use crate::api::{FlexModel, GenerateOptions, Groups, Sampling, save_safetensors_with};
use crate::engine::FlexError;
use crate::hooks::Runtime;
use crate::package::resolve::Resolver;

/// Wakes the worker when a job is queued.
#[derive(Default)]
pub struct Bell {
    rung: Mutex<bool>,
    cv: Condvar,
}

impl Bell {
    pub fn ring(&self) {
        *self.rung.lock().unwrap_or_else(|p| p.into_inner()) = true;
        self.cv.notify_all();
    }

    fn wait(&self) {
        let mut r = self.rung.lock().unwrap_or_else(|p| p.into_inner());
        if !*r {
            r = self
                .cv
                .wait_timeout(r, std::time::Duration::from_millis(500))
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
        }
        *r = false;
    }
}

/// Why a job failed, as its status reports it.
fn reason(e: &FlexError) -> &'static str {
    match e {
        FlexError::Hook { .. } => "hook",
        FlexError::Load(_) => "plugin",
        FlexError::Package(_) => "untrusted",
        FlexError::Input(_) | FlexError::Pattern(_) => "input",
        FlexError::Model(crate::models::error::ModelError::Input(_)) => "input",
        _ => "internal",
    }
}

pub struct Worker {
    pub fm: FlexModel,
    pub rt: Arc<Runtime>,
    pub resolver: Resolver,
    pub store: Arc<Store>,
    pub bell: Arc<Bell>,
}

impl Worker {
    /// Serve jobs until the process ends.
    pub fn run(mut self) {
        loop {
            match self.store.next() {
                Ok(Some(job)) => {
                    let outcome = self.job(&job.id, &job.body);
                    let (state, error) = match outcome {
                        Ok(()) => (State::Done, None),
                        Err((reason, message)) => (
                            State::Failed,
                            Some(
                                serde_json::json!({"reason": reason, "message": message})
                                    .to_string(),
                            ),
                        ),
                    };
                    if let Err(e) = self.store.finish(&job.id, state, error.as_deref()) {
                        tracing::error!("job {}: {e}", job.id);
                    }
                }
                Ok(None) => self.bell.wait(),
                Err(e) => {
                    tracing::error!("job store: {e}");
                    self.bell.wait();
                }
            }
        }
    }

    /// Run one job; `Err((reason, message))` on failure.
    fn job(&mut self, id: &str, body: &str) -> Result<(), (&'static str, String)> {
        let req = JobRequest::parse(body).map_err(|e| ("input", e.to_string()))?;
        let mut handles = Vec::new();
        let result = self.run_hooked(id, &req, &mut handles);
        for h in handles {
            self.fm.remove(h);
        }
        result
    }

    fn run_hooked(
        &mut self,
        id: &str,
        req: &JobRequest,
        handles: &mut Vec<crate::engine::HookHandle>,
    ) -> Result<(), (&'static str, String)> {
        let group = format!("job-{id}");
        let mut plugins = Vec::new();
        for h in &req.hooks {
            let config = h
                .config
                .as_ref()
                .map_or_else(|| "{}".to_string(), serde_json::Value::to_string);
            let spec = format!("{}@{}={config}", h.plugin, h.at);
            let rec = self
                .fm
                .register_spec(&self.rt, &self.resolver, &spec, &[group.as_str()])
                .map_err(|e| (reason(&e), format!("{}: {e}", h.plugin)))?;
            handles.push(rec.handle);
            if let Some(d) = &h.digest
                && *d != rec.digest
            {
                return Err((
                    "untrusted",
                    format!(
                        "{}: the digest is {}, the job asked for {d}",
                        h.plugin, rec.digest
                    ),
                ));
            }
            plugins.push(rec);
        }
        let groups = Groups::only([group.as_str()]);
        let rows: Vec<Vec<i64>> = match (&req.token_ids, &req.prompts) {
            (Some(t), _) => t.clone(),
            (None, Some(p)) => {
                let tok = self.fm.tokenizer().ok_or((
                    "input",
                    "the model has no tokenizer: send token_ids".to_string(),
                ))?;
                p.iter()
                    .map(|text| tok.encode(text))
                    .collect::<Result<_, _>>()
                    .map_err(|e| ("input", e.to_string()))?
            }
            _ => return Err(("input", "no prompts".into())),
        };
        let vocab = self.fm.vocab_size();
        if rows.iter().flatten().any(|&t| t < 0 || t >= vocab) {
            return Err(("input", format!("token ids must be in 0..{vocab}")));
        }
        let many = rows.len() > 1;
        let mut tensors = BTreeMap::new();
        let mut producers = BTreeMap::new();
        for (i, row) in rows.iter().enumerate() {
            let prefix = if many { format!("{i}/") } else { String::new() };
            let ids = Tensor::from_slice(row);
            match req.max_new_tokens {
                None => {
                    let out = self
                        .fm
                        .forward(&ids, &groups)
                        .map_err(|e| (reason(&e), e.to_string()))?;
                    tensors.insert(
                        format!("{prefix}logits"),
                        out.logits.to_device(tch::Device::Cpu),
                    );
                    for (k, t) in out.outputs {
                        if let Some(p) = out.producers.get(&k) {
                            producers.insert(format!("{prefix}{k}"), p.clone());
                        }
                        tensors.insert(format!("{prefix}{k}"), t);
                    }
                }
                Some(n) => {
                    let opts = GenerateOptions {
                        max_new_tokens: n,
                        sampling: Sampling::Greedy,
                        eos: self.fm.eos_tokens().to_vec(),
                    };
                    let out = self
                        .fm
                        .generate(&ids, &groups, &opts, |_, _| {})
                        .map_err(|e| (reason(&e), e.to_string()))?;
                    tensors.insert(format!("{prefix}tokens"), out.tokens);
                    for (k, t) in out.outputs {
                        if let Some(p) = out.producers.get(&k) {
                            producers.insert(format!("{prefix}{k}"), p.clone());
                        }
                        tensors.insert(format!("{prefix}{k}"), t);
                    }
                }
            }
        }
        let mut meta = BTreeMap::new();
        if !plugins.is_empty() {
            meta.insert(
                "flexmodel.plugins".to_string(),
                serde_json::to_string(&plugins).unwrap_or_default(),
            );
        }
        meta.insert("flexmodel.job".to_string(), id.to_string());
        // Written whole or not at all: a temporary file renamed into place.
        let path = self.store.result_path(id);
        let tmp = path.with_extension("partial");
        save_safetensors_with(&tmp, &tensors, &producers, &meta)
            .map_err(|e| ("storage", e.to_string()))?;
        std::fs::rename(&tmp, &path).map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            ("storage", format!("{}: {e}", path.display()))
        })
    }
}
