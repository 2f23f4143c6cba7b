//! `flexmodel`: a thin command line over the `flexmodel` library.
//!
//! ```text
//! flexmodel inspect --model DIR [--seq-len N] [--batch B] [--json]
//! flexmodel run --model DIR (--prompt TEXT | --prompts FILE.jsonl | --token-ids 1,2,3)
//!               [--hook PLUGIN.wasm@PATTERN[=CONFIG_JSON]]... [--save OUT.safetensors]
//! flexmodel demo --model DIR --plugins DIR
//! ```
//! Any error ends the process with exit code 1 and a one-line reason on stderr.

use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use clap::{Parser, Subcommand};
use flexmodel::api::{DistFlexModel, DistOptions, FlexModel, GenerateOptions, Groups, Sampling};
use flexmodel::distributed::rank_from_env;
use flexmodel::hooks::{CpuLimit, Runtime, RuntimeConfig};
use flexmodel::models::{Model, Tokenizer, parse_dtype};
use tch::{Device, Kind, Tensor};

#[derive(Parser)]
#[command(
    name = "flexmodel",
    version,
    about = "Read and edit LLM internals with sandboxed WebAssembly hooks"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(clap::Args, Clone)]
struct ModelArgs {
    /// Hugging Face model folder (config.json, *.safetensors, tokenizer.json).
    #[arg(long)]
    model: PathBuf,
    /// Weights dtype: f32, f16, bf16.
    #[arg(long, default_value = "f32")]
    dtype: String,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: String,
}

/// How the model is split over ranks. Without a launcher, the ranks are
/// threads of this process; under `mpirun`/`srun` (MPI build), processes.
#[derive(clap::Args, Clone, Copy)]
struct MeshArgs {
    /// Tensor-parallel ranks (attention heads and MLP split).
    #[arg(long, default_value_t = 1)]
    tp: usize,
    /// Pipeline stages (contiguous runs of layers).
    #[arg(long, default_value_t = 1)]
    pp: usize,
    /// Data-parallel replicas (prompts are batched dp at a time).
    #[arg(long, default_value_t = 1)]
    dp: usize,
    /// Seconds a rank waits for a peer before failing the run.
    #[arg(long, default_value_t = 120)]
    comm_timeout: u64,
    /// Tensor-parallel collectives through NCCL (CUDA devices; `nccl` build).
    #[arg(long)]
    nccl: bool,
}

#[derive(Subcommand)]
enum Cmd {
    /// List the model's hook points with their shapes.
    Inspect {
        #[command(flatten)]
        model: ModelArgs,
        /// Sequence length for the shapes.
        #[arg(long, default_value_t = 8)]
        seq_len: i64,
        /// Batch size for the shapes.
        #[arg(long, default_value_t = 1)]
        batch: i64,
        /// Machine-readable output (one JSON array).
        #[arg(long)]
        json: bool,
    },
    /// Run the forward with hooks; print next-token predictions; save outputs.
    Run {
        #[command(flatten)]
        model: ModelArgs,
        /// One prompt (needs tokenizer.json in the model folder).
        #[arg(long, conflicts_with_all = ["prompts", "token_ids"])]
        prompt: Option<String>,
        /// JSONL file: each line a string, {"prompt": "..."} or {"token_ids": [..]}.
        #[arg(long, conflicts_with = "token_ids")]
        prompts: Option<PathBuf>,
        /// Comma-separated token ids.
        #[arg(long, value_delimiter = ',')]
        token_ids: Option<Vec<i64>>,
        /// PLUGIN.wasm@PATTERN[=CONFIG_JSON], repeatable.
        #[arg(long = "hook")]
        hooks: Vec<String>,
        /// Save logits and retrieved tensors to a safetensors file.
        #[arg(long)]
        save: Option<PathBuf>,
        /// How many top next-token predictions to print.
        #[arg(long, default_value_t = 5)]
        top_k: i64,
        /// Fuel per hook call (deterministic CPU limit).
        #[arg(long, default_value_t = 4_000_000_000)]
        fuel: u64,
        /// Seed of the hooks' random streams.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Stop the forward after this hook point (name, alias or pattern):
        /// only the hooks up to there run; no logits are computed or saved.
        #[arg(long)]
        stop_at: Option<String>,
        #[command(flatten)]
        mesh: MeshArgs,
    },
    /// Generate text (greedy, or sampled with --temperature), hooks firing at
    /// every step; tokens are printed as they come.
    Generate {
        #[command(flatten)]
        model: ModelArgs,
        /// The prompt (needs tokenizer.json in the model folder).
        #[arg(long, conflicts_with = "token_ids")]
        prompt: Option<String>,
        /// Comma-separated token ids of the prompt.
        #[arg(long, value_delimiter = ',')]
        token_ids: Option<Vec<i64>>,
        #[arg(long, default_value_t = 32)]
        max_new_tokens: usize,
        /// Sample with this temperature (default: greedy).
        #[arg(long)]
        temperature: Option<f64>,
        /// Sample among the K most likely tokens (with --temperature).
        #[arg(long)]
        top_k: Option<i64>,
        /// Seed of the sampler and of the hooks' random streams.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Stop at this token id.
        #[arg(long)]
        eos: Option<i64>,
        /// PLUGIN.wasm@PATTERN[=CONFIG_JSON], repeatable.
        #[arg(long = "hook")]
        hooks: Vec<String>,
        /// Save `tokens` and the hooks' tensors (`step{k}/<point>`).
        #[arg(long)]
        save: Option<PathBuf>,
        /// Fuel per hook call.
        #[arg(long, default_value_t = 4_000_000_000)]
        fuel: u64,
        #[command(flatten)]
        mesh: MeshArgs,
    },
    /// The built-in example: residual-stream norms per layer and how ablating
    /// attention heads changes the next-token predictions.
    Demo {
        #[command(flatten)]
        model: ModelArgs,
        /// Folder with the example plugins (retrieve.wasm, ablate.wasm).
        #[arg(long, default_value = "artifacts/wasm")]
        plugins: PathBuf,
        #[arg(
            long,
            default_value = "Interpretability researchers read the insides of large language"
        )]
        prompt: String,
    },
}

fn device(s: &str) -> Result<Device> {
    match s {
        "cpu" => Ok(Device::Cpu),
        "cuda" => Ok(Device::Cuda(0)),
        _ => {
            let n = s.strip_prefix("cuda:").and_then(|n| n.parse().ok());
            n.map(Device::Cuda)
                .ok_or_else(|| anyhow!("unknown device {s:?} (cpu, cuda, cuda:N)"))
        }
    }
}

fn load_model(a: &ModelArgs) -> Result<(Model, Option<Tokenizer>)> {
    let dev = device(&a.device)?;
    if let Device::Cuda(i) = dev
        && (!tch::Cuda::is_available() || i >= tch::Cuda::device_count() as usize)
    {
        bail!("device {} is not available on this machine", a.device);
    }
    let kind = parse_dtype(&a.dtype)?;
    let m = Model::load(&a.model, kind, dev)
        .with_context(|| format!("loading {}", a.model.display()))?;
    let tok = Tokenizer::load(&a.model)?;
    Ok((m, tok))
}

/// `PLUGIN.wasm@PATTERN[=CONFIG]`.
fn parse_hook(spec: &str) -> Result<(PathBuf, String, String)> {
    let at = spec
        .find(".wasm@")
        .ok_or_else(|| anyhow!("--hook {spec:?}: expected PLUGIN.wasm@PATTERN[=CONFIG_JSON]"))?;
    let path = PathBuf::from(&spec[..at + 5]);
    let rest = &spec[at + 6..];
    let (pattern, config) = match rest.split_once('=') {
        Some((p, c)) => (p.to_string(), c.to_string()),
        None => (rest.to_string(), "{}".to_string()),
    };
    if pattern.is_empty() {
        bail!("--hook {spec:?}: empty hook-point pattern");
    }
    Ok((path, pattern, config))
}

enum Prompt {
    Text(String),
    Ids(Vec<i64>),
}

fn read_prompts(path: &Path) -> Result<Vec<Prompt>> {
    let f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut v = Vec::new();
    for (i, line) in std::io::BufReader::new(f).lines().enumerate() {
        let line = line.with_context(|| format!("reading {}", path.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        let j: serde_json::Value = serde_json::from_str(&line)
            .with_context(|| format!("{}:{}: not JSON", path.display(), i + 1))?;
        v.push(match j {
            serde_json::Value::String(s) => Prompt::Text(s),
            serde_json::Value::Object(o) => {
                if let Some(s) = o.get("prompt").and_then(|s| s.as_str()) {
                    Prompt::Text(s.to_string())
                } else if let Some(ids) = o.get("token_ids").and_then(|a| a.as_array()) {
                    Prompt::Ids(
                        ids.iter()
                            .map(|x| {
                                x.as_i64().ok_or_else(|| {
                                    anyhow!(
                                        "{}:{}: token ids must be integers",
                                        path.display(),
                                        i + 1
                                    )
                                })
                            })
                            .collect::<Result<_>>()?,
                    )
                } else {
                    bail!(
                        "{}:{}: expected {{\"prompt\": ...}} or {{\"token_ids\": [...]}}",
                        path.display(),
                        i + 1
                    )
                }
            }
            _ => bail!(
                "{}:{}: expected a string or an object",
                path.display(),
                i + 1
            ),
        });
    }
    if v.is_empty() {
        bail!("{} holds no prompts", path.display());
    }
    Ok(v)
}

fn token_ids(p: &Prompt, tok: Option<&Tokenizer>, vocab: i64) -> Result<Vec<i64>> {
    let ids = match p {
        Prompt::Ids(ids) => ids.clone(),
        Prompt::Text(t) => tok
            .ok_or_else(|| anyhow!("the model folder has no tokenizer.json: pass --token-ids"))?
            .encode(t)?,
    };
    if ids.is_empty() {
        bail!("empty prompt");
    }
    if let Some(bad) = ids.iter().find(|&&i| i < 0 || i >= vocab) {
        bail!("token id {bad} is outside the vocabulary (0..{vocab})");
    }
    Ok(ids)
}

fn top_k(logits: &Tensor, k: i64, tok: Option<&Tokenizer>) -> Vec<(String, f64)> {
    let last = logits
        .select(0, 0)
        .select(0, -1)
        .to_kind(Kind::Float)
        .softmax(-1, Kind::Float);
    let (p, i) = last.topk(k.min(last.size()[0]), -1, true, true);
    (0..p.size()[0])
        .map(|j| {
            let id = i.int64_value(&[j]);
            let text = tok.map(|t| t.token(id)).unwrap_or_else(|| format!("#{id}"));
            (text, p.double_value(&[j]))
        })
        .collect()
}

fn show(preds: &[(String, f64)]) -> String {
    preds
        .iter()
        .map(|(t, p)| format!("{t:?} {:.3}", p))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Save `tensors` as safetensors, recording in the file's metadata which
/// plugin emitted each output (`flexmodel.producer.<key>`).
fn save(
    path: &Path,
    tensors: &BTreeMap<String, Tensor>,
    producers: &BTreeMap<String, String>,
) -> Result<()> {
    flexmodel::api::save_safetensors(path, tensors, producers)
        .with_context(|| format!("writing {}", path.display()))
}

struct RunOpts<'a> {
    hooks: &'a [String],
    out: Option<&'a Path>,
    k: i64,
    fuel: u64,
    seed: u64,
    stop_at: Option<&'a str>,
    mesh: MeshArgs,
}

/// What runs the forwards: the model on one rank, on threads, or this
/// process's rank of an MPI job.
enum Runner {
    Single(Box<FlexModel>),
    Threads(Box<DistFlexModel>),
    #[cfg(feature = "mpi")]
    Mpi(Box<mpi_rank::MpiRank>),
}

#[cfg(feature = "mpi")]
mod mpi_rank {
    use super::*;
    use flexmodel::api::{HookSet, RankEngine};
    use flexmodel::distributed::mpi::{MpiRuntime, init};

    pub struct MpiRank {
        pub engine: RankEngine,
        pub hooks: HookSet,
        pub index: u64,
        // Last: MPI is finalised after the engine's communicators are gone.
        pub _mpi: MpiRuntime,
    }

    pub fn start(model: &ModelArgs, mesh: MeshArgs) -> Result<MpiRank> {
        let timeout = std::time::Duration::from_secs(mesh.comm_timeout);
        let (rt, world) = init(timeout)?;
        // The ranks on this machine share its cores.
        if let Some(local) = flexmodel::distributed::local_ranks_from_env() {
            tch::set_num_threads(flexmodel::distributed::threads_per_rank(local));
        }
        let n = flexmodel::distributed::Communicator::size(&world);
        if mesh.tp * mesh.pp * mesh.dp != n {
            bail!(
                "--tp {} × --pp {} × --dp {} must equal the {n} MPI ranks",
                mesh.tp,
                mesh.pp,
                mesh.dp
            );
        }
        let mut opts = DistOptions::new(mesh.pp, mesh.dp, mesh.tp)?;
        opts.timeout = timeout;
        opts.nccl = mesh.nccl;
        opts.kind = parse_dtype(&model.dtype)?;
        opts.device = device(&model.device)?;
        let engine = RankEngine::new(&model.model, &opts, Box::new(world))
            .with_context(|| format!("loading {}", model.model.display()))?;
        Ok(MpiRank {
            engine,
            hooks: HookSet::default(),
            index: 0,
            _mpi: rt,
        })
    }
}

impl Runner {
    fn start(model: &ModelArgs, mesh: MeshArgs) -> Result<(Runner, Option<Tokenizer>)> {
        let tok = Tokenizer::load(&model.model)?;
        if let Some((rank, world)) = rank_from_env().filter(|(_, w)| *w > 1) {
            #[cfg(feature = "mpi")]
            {
                let _ = (rank, world);
                return Ok((Runner::Mpi(Box::new(mpi_rank::start(model, mesh)?)), tok));
            }
            #[cfg(not(feature = "mpi"))]
            bail!(
                "launched as rank {rank} of {world} (mpirun/srun), but this flexmodel was \
                 built without MPI: rebuild with `--features mpi`"
            );
        }
        if mesh.tp * mesh.pp * mesh.dp > 1 {
            let mut opts = DistOptions::new(mesh.pp, mesh.dp, mesh.tp)?;
            opts.timeout = std::time::Duration::from_secs(mesh.comm_timeout);
            opts.nccl = mesh.nccl;
            opts.kind = parse_dtype(&model.dtype)?;
            opts.device = device(&model.device)?;
            let dm = DistFlexModel::load(&model.model, opts)
                .with_context(|| format!("loading {}", model.model.display()))?;
            return Ok((Runner::Threads(Box::new(dm)), tok));
        }
        let (m, _) = load_model(model)?;
        Ok((Runner::Single(Box::new(FlexModel::new(m))), tok))
    }

    fn points(&self) -> Vec<flexmodel::models::PointInfo> {
        match self {
            Runner::Single(f) => f.points(1, 1),
            Runner::Threads(d) => d.points(1, 1),
            #[cfg(feature = "mpi")]
            Runner::Mpi(m) => m.engine.points(1, 1),
        }
    }

    /// Whether this process prints and saves (global rank 0).
    fn is_root(&self) -> bool {
        match self {
            #[cfg(feature = "mpi")]
            Runner::Mpi(m) => m.engine.global_rank() == 0,
            _ => true,
        }
    }

    fn register(
        &mut self,
        plugin: &std::sync::Arc<flexmodel::hooks::Plugin>,
        pattern: &str,
        config: &str,
    ) -> Result<()> {
        match self {
            Runner::Single(f) => {
                f.register_wasm(plugin, pattern, config, &[])?;
            }
            Runner::Threads(d) => {
                d.register_wasm(plugin, pattern, config, &[])?;
            }
            #[cfg(feature = "mpi")]
            Runner::Mpi(m) => {
                let hook = flexmodel::hooks::WasmHook::new(plugin.clone(), config)?;
                let points = m.engine.points(1, 1);
                m.hooks
                    .add(std::sync::Arc::new(hook), pattern, &[], &points)?;
            }
        }
        Ok(())
    }

    /// Generate; `None` on ranks other than global rank 0.
    fn generate(
        &mut self,
        t: &Tensor,
        opts: &GenerateOptions,
        on_token: impl FnMut(usize, &[i64]),
    ) -> Result<Option<flexmodel::api::GenerateOutput>> {
        Ok(match self {
            Runner::Single(f) => Some(f.generate(t, &Groups::All, opts, on_token)?),
            Runner::Threads(d) => Some(d.generate(t, &Groups::All, opts, on_token)?),
            #[cfg(feature = "mpi")]
            Runner::Mpi(m) => {
                let i = m.index;
                m.index += opts.max_new_tokens as u64;
                m.engine
                    .generate(t, &m.hooks, &Groups::All, i, opts, on_token)?
            }
        })
    }

    /// Logits (None: stopped early, or not global rank 0), outputs, logs.
    #[allow(clippy::type_complexity)]
    fn forward(
        &mut self,
        t: &Tensor,
        stop_at: Option<&str>,
    ) -> Result<
        Option<(
            Option<Tensor>,
            BTreeMap<String, Tensor>,
            BTreeMap<String, String>,
            Vec<(String, String, flexmodel::hooks::LogLevel, String)>,
        )>,
    > {
        match (self, stop_at) {
            (Runner::Single(f), None) => {
                let o = f.forward(t, &Groups::All)?;
                Ok(Some((Some(o.logits), o.outputs, o.producers, o.logs)))
            }
            (Runner::Single(f), Some(p)) => {
                let o = f.forward_until(t, &Groups::All, p)?;
                Ok(Some((None, o.outputs, o.producers, o.logs)))
            }
            (Runner::Threads(d), None) => {
                let o = d.forward(t, &Groups::All)?;
                Ok(Some((Some(o.logits), o.outputs, o.producers, o.logs)))
            }
            #[cfg(feature = "mpi")]
            (Runner::Mpi(m), None) => {
                let i = m.index;
                m.index += 1;
                Ok(m.engine
                    .forward(t, &m.hooks, &Groups::All, i)?
                    .map(|o| (Some(o.logits), o.outputs, o.producers, o.logs)))
            }
            _ => bail!("--stop-at is not supported with --tp/--pp/--dp"),
        }
    }
}

/// Row `j` of a batched tensor (first dimension `n` > 1), else the tensor.
fn row(t: &Tensor, j: i64, n: i64) -> Tensor {
    if n > 1 && t.dim() > 0 && t.size()[0] == n {
        t.narrow(0, j, 1)
    } else {
        t.shallow_clone()
    }
}

fn run(model: &ModelArgs, prompts: Vec<Prompt>, o: RunOpts<'_>) -> Result<()> {
    let RunOpts {
        hooks,
        out,
        k,
        fuel,
        seed,
        stop_at,
        mesh,
    } = o;
    let (mut runner, tok) = Runner::start(model, mesh)?;
    let root = runner.is_root();
    let vocab = runner.points().last().map(|p| p.shape[2]).unwrap_or(0);
    let rt = Runtime::new(RuntimeConfig {
        cpu: CpuLimit::Fuel(fuel),
        seed,
        ..RuntimeConfig::default()
    })?;
    for spec in hooks {
        let (path, pattern, config) = parse_hook(spec)?;
        let plugin = rt
            .load_file(&path)
            .with_context(|| format!("--hook {spec}"))?;
        runner
            .register(&plugin, &pattern, &config)
            .with_context(|| format!("--hook {spec}"))?;
    }
    // Data parallelism splits a batch: prompts go dp at a time.
    let chunk = mesh.dp.max(1);
    if !prompts.len().is_multiple_of(chunk) {
        bail!(
            "--dp {chunk} batches prompts {chunk} at a time: give a multiple of {chunk} prompts (got {})",
            prompts.len()
        );
    }
    let many = prompts.len() > 1;
    let bar = if many && root {
        let b = indicatif::ProgressBar::new(prompts.len() as u64);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "{bar:30} {pos}/{len} prompts {elapsed_precise}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        Some(b)
    } else {
        None
    };
    // A hidden bar (stdout not a terminal) swallows its `println`: print
    // ourselves then.
    let say = |line: String| match &bar {
        Some(b) if !b.is_hidden() => b.println(line),
        _ => println!("{line}"),
    };
    let mut saved = BTreeMap::new();
    let mut saved_by = BTreeMap::new();
    for (c, group) in prompts.chunks(chunk).enumerate() {
        let first = c * chunk;
        let mut rows = Vec::with_capacity(group.len());
        for (j, p) in group.iter().enumerate() {
            let ids = token_ids(p, tok.as_ref(), vocab)
                .with_context(|| format!("prompt {}", first + j))?;
            rows.push(ids);
        }
        if rows.iter().any(|r| r.len() != rows[0].len()) {
            bail!(
                "prompts {first}..{} are batched for --dp {chunk} and must have the same number of tokens",
                first + group.len()
            );
        }
        let t = Tensor::stack(
            &rows
                .iter()
                .map(|r| Tensor::from_slice(r))
                .collect::<Vec<_>>(),
            0,
        );
        let result = runner
            .forward(&t, stop_at)
            .map_err(|e| anyhow!("prompt {first}: {e:#}"))?;
        let Some((logits, outputs, producers, logs)) = result else {
            continue; // not global rank 0
        };
        for (hook, point, level, msg) in &logs {
            say(format!("[{hook} @ {point}] {level:?}: {msg}"));
        }
        let n = rows.len() as i64;
        for (j, ids) in rows.iter().enumerate() {
            let i = first + j;
            let jl = j as i64;
            let line = match &logits {
                Some(l) => format!(
                    "prompt {i}: {} tokens; next token: {}",
                    ids.len(),
                    show(&top_k(&row(l, jl, n), k, tok.as_ref()))
                ),
                None => format!(
                    "prompt {i}: {} tokens; stopped after {}",
                    ids.len(),
                    stop_at.unwrap_or("")
                ),
            };
            say(line);
            if let Some(b) = &bar {
                b.inc(1);
            }
            let prefix = if many { format!("{i}/") } else { String::new() };
            if let Some(l) = &logits {
                saved.insert(
                    format!("{prefix}logits"),
                    row(l, jl, n).to_device(Device::Cpu),
                );
            }
            for (key, v) in &outputs {
                saved.insert(format!("{prefix}{key}"), row(v, jl, n));
                if let Some(p) = producers.get(key) {
                    saved_by.insert(format!("{prefix}{key}"), p.clone());
                }
            }
        }
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    if let (Some(path), true) = (out, root) {
        save(path, &saved, &saved_by)?;
        println!("saved {} tensors to {}", saved.len(), path.display());
    }
    Ok(())
}

struct GenOpts<'a> {
    hooks: &'a [String],
    out: Option<&'a Path>,
    fuel: u64,
    generation: GenerateOptions,
    mesh: MeshArgs,
}

fn generate(model: &ModelArgs, prompt: Prompt, o: GenOpts<'_>) -> Result<()> {
    let (mut runner, tok) = Runner::start(model, o.mesh)?;
    let root = runner.is_root();
    let vocab = runner.points().last().map(|p| p.shape[2]).unwrap_or(0);
    let seed = match o.generation.sampling {
        Sampling::Sample { seed, .. } => seed,
        Sampling::Greedy => 0,
    };
    let rt = Runtime::new(RuntimeConfig {
        cpu: CpuLimit::Fuel(o.fuel),
        seed,
        ..RuntimeConfig::default()
    })?;
    for spec in o.hooks {
        let (path, pattern, config) = parse_hook(spec)?;
        let plugin = rt
            .load_file(&path)
            .with_context(|| format!("--hook {spec}"))?;
        runner
            .register(&plugin, &pattern, &config)
            .with_context(|| format!("--hook {spec}"))?;
    }
    let ids = token_ids(&prompt, tok.as_ref(), vocab)?;
    let t = Tensor::from_slice(&ids).unsqueeze(0);
    // Stream: print the text each new token adds (decoding the whole tail
    // keeps multi-byte characters and spacing right).
    let mut shown = String::new();
    let mut new: Vec<i64> = Vec::new();
    let mut out = std::io::stdout();
    if root {
        match &tok {
            Some(tk) => print!("{}", tk.decode(&ids)),
            None => print!("{ids:?} ->"),
        }
    }
    let result = runner.generate(&t, &o.generation, |_, next| {
        new.push(next[0]);
        let piece = match &tok {
            Some(tk) => {
                let text = tk.decode(&new);
                let piece = text
                    .strip_prefix(shown.as_str())
                    .unwrap_or(&text)
                    .to_string();
                shown = text;
                piece
            }
            None => format!(" {}", next[0]),
        };
        print!("{piece}");
        let _ = std::io::Write::flush(&mut out);
    });
    let result = result?;
    let Some(g) = result else {
        return Ok(()); // not global rank 0
    };
    println!();
    println!(
        "({} new tokens: {:?})",
        g.new_tokens[0].len(),
        g.new_tokens[0]
    );
    for (hook, point, level, msg) in &g.logs {
        eprintln!("[{hook} @ {point}] {level:?}: {msg}");
    }
    if let Some(path) = o.out {
        let mut saved = g.outputs;
        saved.insert("tokens".into(), g.tokens);
        save(path, &saved, &g.producers)?;
        println!("saved {} tensors to {}", saved.len(), path.display());
    }
    Ok(())
}

fn inspect(model: &ModelArgs, seq: i64, batch: i64, json: bool) -> Result<()> {
    if seq < 1 || batch < 1 {
        bail!("--seq-len and --batch must be at least 1");
    }
    let (m, _) = load_model(model)?;
    let points = m.points(batch, seq);
    if json {
        println!("{}", serde_json::to_string(&points)?);
        return Ok(());
    }
    println!(
        "{} ({} hook points, shapes for batch {batch} x {seq} tokens)",
        m.architecture(),
        points.len()
    );
    let w = points.iter().map(|p| p.name.len()).max().unwrap_or(10);
    let wa = points
        .iter()
        .map(|p| p.alias.len())
        .max()
        .unwrap_or(5)
        .max(5);
    println!("{:<w$}  {:<wa$}  shape", "hook point", "alias");
    for p in &points {
        println!("{:<w$}  {:<wa$}  {:?}", p.name, p.alias, p.shape);
    }
    Ok(())
}

fn demo(model: &ModelArgs, plugins: &Path, prompt: &str) -> Result<()> {
    let (m, tok) = load_model(model)?;
    let tok = tok.ok_or_else(|| anyhow!("{} has no tokenizer.json", model.model.display()))?;
    let points = m.points(1, 1);
    let n_layers = points
        .iter()
        .filter(|p| p.alias.ends_with(".hook_resid_post"))
        .count();
    let heads = points
        .iter()
        .find(|p| p.alias == "blocks.0.attn.hook_z")
        .map(|p| p.shape[2])
        .unwrap_or(1);
    let arch = m.architecture();
    let mut fm = FlexModel::new(m);
    let rt = Runtime::new(RuntimeConfig::default())?;
    let load = |n: &str| {
        let p = plugins.join(format!("{n}.wasm"));
        rt.load_file(&p)
            .with_context(|| format!("loading {} (run scripts/build-guests.sh)", p.display()))
    };
    let retrieve = load("retrieve")?;
    let ablate = load("ablate")?;
    fm.register_wasm(
        &retrieve,
        "blocks.*.hook_resid_post",
        r#"{"slice": [null, -1]}"#,
        &["probe"],
    )?;
    let half: Vec<i64> = (0..heads / 2).collect();
    let cfg = serde_json::json!({ "heads": half }).to_string();
    fm.register_wasm(&ablate, "blocks.*.attn.hook_z", &cfg, &["ablation"])?;

    let ids = tok.encode(prompt)?;
    let t = Tensor::from_slice(&ids).unsqueeze(0);
    println!(
        "model: {} ({arch}, {n_layers} layers, {heads} heads), random weights made at setup",
        model.model.display()
    );
    println!("prompt: {prompt:?} -> {} tokens\n", ids.len());
    let clean = fm
        .forward(&t, &Groups::except(["ablation"]))
        .map_err(|e| anyhow!("{e}"))?;
    let ablated = fm.forward(&t, &Groups::All).map_err(|e| anyhow!("{e}"))?;
    println!("residual stream at the last token (retrieved by retrieve.wasm, sandboxed):");
    println!("{:<8} {:>12} {:>18}", "layer", "|resid|", "|resid| ablated");
    let mut keys: Vec<&String> = clean.outputs.keys().collect();
    keys.sort_by_key(|k| {
        k.rsplit('.')
            .next()
            .and_then(|n| n.parse::<usize>().ok())
            .unwrap_or(0)
    });
    for k in keys {
        let a = clean.outputs[k]
            .to_kind(Kind::Double)
            .norm()
            .double_value(&[]);
        let b = ablated
            .outputs
            .get(k)
            .map(|t| t.to_kind(Kind::Double).norm().double_value(&[]))
            .unwrap_or(f64::NAN);
        println!(
            "{:<8} {:>12.4} {:>18.4}",
            k.rsplit('.').next().unwrap_or(k),
            a,
            b
        );
    }
    println!(
        "\ntop next tokens, clean:   {}",
        show(&top_k(&clean.logits, 5, Some(&tok)))
    );
    println!("ablating heads {half:?} in every layer (ablate.wasm at blocks.*.attn.hook_z):");
    println!(
        "top next tokens, ablated: {}",
        show(&top_k(&ablated.logits, 5, Some(&tok)))
    );
    let p = clean.logits.select(1, -1).softmax(-1, Kind::Float);
    let q = ablated.logits.select(1, -1).softmax(-1, Kind::Float);
    let kl = (&p * (p.log() - q.log()))
        .sum(Kind::Double)
        .double_value(&[]);
    println!("KL(clean || ablated) at the next token: {kl:.5} nats");
    Ok(())
}

fn main() {
    let cli = Cli::parse();
    // Keep large activation buffers warm across forwards (see tune_allocator).
    if std::env::var_os("FLEXMODEL_NO_MALLOPT").is_none() {
        flexmodel::tune_allocator();
    }
    let r = match cli.cmd {
        Cmd::Inspect {
            model,
            seq_len,
            batch,
            json,
        } => inspect(&model, seq_len, batch, json),
        Cmd::Run {
            model,
            prompt,
            prompts,
            token_ids,
            hooks,
            save,
            top_k,
            fuel,
            seed,
            stop_at,
            mesh,
        } => {
            let ps = if let Some(p) = prompt {
                Ok(vec![Prompt::Text(p)])
            } else if let Some(f) = prompts {
                read_prompts(&f)
            } else if let Some(ids) = token_ids {
                Ok(vec![Prompt::Ids(ids)])
            } else {
                Err(anyhow!("give --prompt, --prompts or --token-ids"))
            };
            ps.and_then(|ps| {
                let o = RunOpts {
                    hooks: &hooks,
                    out: save.as_deref(),
                    k: top_k,
                    fuel,
                    seed,
                    stop_at: stop_at.as_deref(),
                    mesh,
                };
                run(&model, ps, o)
            })
        }
        Cmd::Generate {
            model,
            prompt,
            token_ids,
            max_new_tokens,
            temperature,
            top_k,
            seed,
            eos,
            hooks,
            save,
            fuel,
            mesh,
        } => {
            let p = match (prompt, token_ids) {
                (Some(p), _) => Ok(Prompt::Text(p)),
                (None, Some(ids)) => Ok(Prompt::Ids(ids)),
                (None, None) => Err(anyhow!("give --prompt or --token-ids")),
            };
            let sampling = match temperature {
                Some(temperature) => Sampling::Sample {
                    temperature,
                    top_k,
                    seed,
                },
                None => Sampling::Greedy,
            };
            p.and_then(|p| {
                let o = GenOpts {
                    hooks: &hooks,
                    out: save.as_deref(),
                    fuel,
                    generation: GenerateOptions {
                        max_new_tokens,
                        sampling,
                        eos,
                    },
                    mesh,
                };
                generate(&model, p, o)
            })
        }
        Cmd::Demo {
            model,
            plugins,
            prompt,
        } => demo(&model, &plugins, &prompt),
    };
    if let Err(e) = r {
        let msg = format!("{e:#}").replace('\n', " ");
        eprintln!("error: {msg}");
        std::process::exit(1);
    }
}
