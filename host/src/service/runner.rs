//! Running jobs on the loaded model. A job's prompts run as one padded
//! batch (right padding unless the job asks for left); several forward jobs, of any tenants, run as one
//! batch too (co-tenancy batching), each job's hooks confined to its own
//! rows by a [`Lane`]: they see an activation of their own batch's rows,
//! their edits land in those rows only, their outputs carry the job's
//! prefix and go to that job only. Each job's result is cut from the batch
//! as `flexmodel run` cuts prompts ([`Rows`]), so it equals the job run
//! alone. Every run registers fresh plugin instances (no state shared
//! between jobs or tenants) and removes them after.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use tch::Tensor;

use super::job::JobRequest;
use super::quota::Quota;
use crate::api::rows::{Rows, SeqDims};
use crate::api::{
    Batch, FlexModel, GenerateOptions, Groups, Halt, HookHandle, Lane, Limits, PluginRecord,
    Sampling,
};
use crate::engine::FlexError;
use crate::hooks::{HookErrorKind, Runtime};
use crate::package::reference::{PackageRef, PluginSource};
use crate::package::resolve::Resolver;

/// Why a job failed (its status' `reason`) and the message.
pub type Failure = (&'static str, String);

/// A job taken from the queue, checked and tokenized.
pub struct Task {
    pub id: String,
    /// The request as submitted (JSON).
    pub body: String,
    pub req: JobRequest,
    /// The limits that apply (the tenant's under the server's).
    pub quota: Quota,
    pub rows: Vec<Vec<i64>>,
    /// Set when the job is cancelled while it runs.
    pub stop: Arc<AtomicBool>,
    pub started: Instant,
}

/// What a finished job's result file holds.
#[derive(Default)]
pub struct Outcome {
    pub tensors: BTreeMap<String, Tensor>,
    pub producers: BTreeMap<String, String>,
    pub plugins: Vec<PluginRecord>,
}

/// A failed pass' reason: which limit or which kind of failure.
pub fn reason(e: &FlexError) -> &'static str {
    match e {
        FlexError::Hook { error, .. } => match &error.kind {
            HookErrorKind::OutOfFuel { .. } => "fuel",
            HookErrorKind::DeadlineExceeded { .. } => "deadline",
            HookErrorKind::MemoryLimit { .. } | HookErrorKind::ResourceLimit(_) => "memory",
            HookErrorKind::ForwardLimit { message } if message.starts_with("quota ") => "quota",
            HookErrorKind::ForwardLimit { message } if message.contains("cancelled") => "cancelled",
            HookErrorKind::ForwardLimit { .. } => "output",
            HookErrorKind::Trap { .. }
            | HookErrorKind::StackOverflow
            | HookErrorKind::Panic { .. } => "trap",
            _ => "hook",
        },
        // `init` is metered like a call: out of fuel there is still fuel.
        FlexError::Load(crate::hooks::LoadError::Init { error, .. })
        | FlexError::Load(crate::hooks::LoadError::Instantiate { error, .. })
            if error.contains("ran out of fuel") =>
        {
            "fuel"
        }
        FlexError::Load(_) => "plugin",
        FlexError::Package(_) => "untrusted",
        FlexError::Stopped(m) if m.starts_with("quota ") => "quota",
        FlexError::Stopped(_) => "cancelled",
        FlexError::Input(_) | FlexError::Pattern(_) => "input",
        FlexError::Model(crate::models::error::ModelError::Input(_)) => "input",
        _ => "internal",
    }
}

fn failed(e: FlexError) -> Failure {
    (reason(&e), e.to_string())
}

/// Check and tokenize a queued job.
pub fn prepare(fm: &FlexModel, id: &str, body: &str, quota: Quota) -> Result<Task, Failure> {
    let req = JobRequest::read(body).map_err(|e| ("input", e.to_string()))?;
    let rows: Vec<Vec<i64>> = match (&req.token_ids, &req.prompts) {
        (Some(t), _) => t.clone(),
        (None, Some(p)) => {
            let tok = fm.tokenizer().ok_or((
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
    let vocab = fm.vocab_size();
    if rows.iter().flatten().any(|&t| t < 0 || t >= vocab) {
        return Err(("input", format!("token ids must be in 0..{vocab}")));
    }
    Ok(Task {
        id: id.to_string(),
        body: body.to_string(),
        req,
        quota,
        rows,
        stop: Arc::new(AtomicBool::new(false)),
        started: Instant::now(),
    })
}

/// When `task` must stop: past its wall time, or cancelled.
fn halt(task: &Task) -> Halt {
    Halt {
        deadline: task.quota.wall_ms.map(|ms| {
            (
                task.started + Duration::from_millis(ms),
                Duration::from_millis(ms),
            )
        }),
        stop: Some(task.stop.clone()),
    }
}

/// `want` (the digest a job asked for), if any, is `got`.
fn check_digest(want: Option<&str>, got: &str, label: &str) -> Result<(), Failure> {
    match want {
        Some(d) if d != got => Err((
            "untrusted",
            format!("{label}: the digest is {got}, the job asked for {d}"),
        )),
        _ => Ok(()),
    }
}

/// The model, the plugins' runtime and the trust policy jobs run under.
pub struct Runner<'a> {
    pub fm: &'a mut FlexModel,
    pub rt: &'a Arc<Runtime>,
    pub resolver: &'a Resolver,
    /// Uploaded components accepted already.
    pub uploads: &'a super::uploads::Uploads,
    pub dims: &'a HashMap<String, SeqDims>,
}

impl Runner<'_> {
    fn group(task: &Task) -> String {
        format!("job-{}", task.id)
    }

    /// Register `task`'s hooks (fresh instances) in its lane; their
    /// records, handles pushed to `handles` as they are made.
    fn register(
        &mut self,
        task: &Task,
        lane: Lane,
        handles: &mut Vec<HookHandle>,
    ) -> Result<Vec<PluginRecord>, Failure> {
        let group = Self::group(task);
        let limits = Limits {
            fuel_per_call: task.quota.fuel_per_call,
            memory_bytes: task.quota.memory_bytes.map(|m| m as usize),
            seed: task.req.seed,
        };
        let mut records = Vec::new();
        for h in &task.req.hooks {
            let label = h.label();
            let config = h
                .config
                .as_ref()
                .map_or_else(|| "{}".to_string(), serde_json::Value::to_string);
            let groups = [group.as_str()];
            let registered = match (&h.plugin, &h.component) {
                (Some(p), _) => {
                    let resolved = PackageRef::parse(p)
                        .and_then(|r| self.resolver.resolve(&PluginSource::Package(r)))
                        .map_err(|e| ("untrusted", format!("{label}: {e}")))?;
                    check_digest(h.digest.as_deref(), &resolved.digest, &label)?;
                    self.fm
                        .register_resolved(self.rt, resolved, &h.at, &config, &groups, limits)
                }
                (None, Some(text)) => {
                    let a = self
                        .uploads
                        .accept(self.rt, self.resolver, text)
                        .map_err(|m| ("untrusted", format!("{label}: {m}")))?;
                    check_digest(h.digest.as_deref(), &a.digest, &label)?;
                    self.fm
                        .register_accepted(&a, &h.at, &config, &groups, limits)
                }
                (None, None) => return Err(("input", "a hook without a plugin".into())),
            };
            let rec = registered.map_err(|e| (reason(&e), format!("{label}: {e}")))?;
            handles.push(rec.handle);
            self.fm.set_lane(rec.handle, Some(lane.clone()));
            records.push(rec);
        }
        Ok(records)
    }

    fn lane(&self, task: &Task, rows: Option<(i64, i64)>, key_prefix: String) -> Lane {
        Lane {
            rows,
            key_prefix,
            forward_offset: self.fm.forward_count(),
            halt: halt(task),
        }
    }

    /// Run forward jobs as one padded batch: each job's outcome, or the
    /// batch's failure (then nothing of it is kept).
    pub fn forward(&mut self, tasks: &[Task]) -> Result<Vec<Outcome>, Failure> {
        let mut handles = Vec::new();
        let r = self.forward_hooked(tasks, &mut handles);
        for h in handles {
            self.fm.remove(h);
        }
        r
    }

    fn forward_hooked(
        &mut self,
        tasks: &[Task],
        handles: &mut Vec<HookHandle>,
    ) -> Result<Vec<Outcome>, Failure> {
        let shared = tasks.len() > 1;
        let mut records = Vec::new();
        let mut offset = 0i64;
        for t in tasks {
            let n = t.rows.len() as i64;
            let lane = if shared {
                self.lane(t, Some((offset, n)), format!("{}/", t.id))
            } else {
                self.lane(t, None, String::new())
            };
            records.push(self.register(t, lane, handles)?);
            offset += n;
        }
        let all: Vec<Vec<i64>> = tasks.iter().flat_map(|t| t.rows.iter().cloned()).collect();
        let padding = tasks[0].req.padding;
        let batch = Batch::pad(&all, padding, 0).map_err(failed)?;
        let longer = batch.ids.size()[1];
        let groups = Groups::only(tasks.iter().map(Self::group));
        // A job stopping early runs alone (it is not batchable).
        let passed = match &tasks[0].req.stop_at {
            None => self.fm.forward(&batch, &groups).map(|o| {
                (
                    Some(o.logits.to_device(tch::Device::Cpu)),
                    o.outputs,
                    o.producers,
                )
            }),
            Some(at) => self
                .fm
                .forward_until(&batch, &groups, at)
                .map(|o| (None, o.outputs, o.producers)),
        };
        let (logits, outputs, producers) = match passed {
            Ok(p) => p,
            // Another rank of a launched job: rank 0 keeps the results.
            Err(FlexError::NotRoot { .. }) => {
                return Ok(tasks.iter().map(|_| Outcome::default()).collect());
            }
            Err(e) => return Err(failed(e)),
        };
        let mut offset = 0i64;
        let mut outcomes = Vec::new();
        for (t, plugins) in tasks.iter().zip(records) {
            let n = t.rows.len() as i64;
            let rows = Rows {
                lens: t.rows.iter().map(|r| r.len() as i64).collect(),
                seq_len: t.rows.iter().map(Vec::len).max().unwrap_or(0) as i64,
                padding,
                padded: batch.attention_mask.is_some(),
                dims: self.dims,
            };
            let prefix = if shared {
                format!("{}/", t.id)
            } else {
                String::new()
            };
            let mine = logits.as_ref().map(|l| l.narrow(0, offset, n));
            let mut o = Outcome {
                plugins,
                ..Outcome::default()
            };
            let many = n > 1;
            for j in 0..t.rows.len() {
                let p = if many { format!("{j}/") } else { String::new() };
                if let (true, Some(l)) = (t.req.return_logits, &mine) {
                    o.tensors
                        .insert(format!("{p}logits"), rows.logits(l, j).contiguous());
                }
                for (key, v) in &outputs {
                    let Some(k) = key.strip_prefix(prefix.as_str()) else {
                        continue;
                    };
                    let whole = rows.cut(k, v, longer);
                    o.tensors
                        .insert(format!("{p}{k}"), rows.part(k, &whole, j).contiguous());
                    if let Some(who) = producers.get(key) {
                        o.producers.insert(format!("{p}{k}"), who.clone());
                    }
                }
            }
            outcomes.push(o);
            offset += n;
        }
        Ok(outcomes)
    }

    /// Run a generation job (alone): each prompt greedily, stopping at the
    /// model's EOS.
    pub fn generate(&mut self, task: &Task) -> Result<Outcome, Failure> {
        let mut handles = Vec::new();
        let r = self.generate_hooked(task, &mut handles);
        for h in handles {
            self.fm.remove(h);
        }
        r
    }

    fn generate_hooked(
        &mut self,
        task: &Task,
        handles: &mut Vec<HookHandle>,
    ) -> Result<Outcome, Failure> {
        let plugins = {
            let lane = self.lane(task, None, String::new());
            self.register(task, lane, handles)?
        };
        let groups = Groups::only([Self::group(task)]);
        let opts = GenerateOptions {
            max_new_tokens: task.req.max_new_tokens.unwrap_or(1),
            sampling: Sampling::Greedy,
            eos: if task.req.ignore_eos {
                Vec::new()
            } else {
                self.fm.eos_tokens().to_vec()
            },
            halt: halt(task),
        };
        let many = task.rows.len() > 1;
        let mut o = Outcome {
            plugins,
            ..Outcome::default()
        };
        for (i, row) in task.rows.iter().enumerate() {
            let p = if many { format!("{i}/") } else { String::new() };
            let out = match self
                .fm
                .generate(&Tensor::from_slice(row), &groups, &opts, |_, _| {})
            {
                Ok(out) => out,
                Err(FlexError::NotRoot { .. }) => continue,
                Err(e) => return Err(failed(e)),
            };
            o.tensors.insert(format!("{p}tokens"), out.tokens);
            for (k, t) in out.outputs {
                if let Some(who) = out.producers.get(&k) {
                    o.producers.insert(format!("{p}{k}"), who.clone());
                }
                o.tensors.insert(format!("{p}{k}"), t);
            }
        }
        Ok(o)
    }
}

/// Bytes of a result's tensors.
pub fn result_bytes(o: &Outcome) -> u64 {
    o.tensors
        .values()
        .map(|t| t.numel() as u64 * t.kind().elt_size_in_bytes() as u64)
        .sum()
}

/// Run `tasks` (taken together): a generation job alone, forward jobs in
/// one batch; when a shared batch fails, each job again alone (with fresh
/// plugin instances), so that one job's failure never fails the others.
/// Every rank of a launched job takes the same path (a failure is every
/// rank's).
pub fn run_batch(runner: &mut Runner<'_>, tasks: &[Task]) -> Vec<Result<Outcome, Failure>> {
    if tasks[0].req.max_new_tokens.is_some() {
        return vec![runner.generate(&tasks[0])];
    }
    match runner.forward(tasks) {
        Ok(outcomes) => outcomes.into_iter().map(Ok).collect(),
        Err(f) if tasks.len() > 1 => {
            tracing::info!("a shared batch failed ({}): its jobs run alone", f.1);
            tasks
                .iter()
                .map(|t| {
                    runner
                        .forward(std::slice::from_ref(t))
                        .map(|mut o| o.remove(0))
                })
                .collect()
        }
        Err(f) => vec![Err(f)],
    }
}
