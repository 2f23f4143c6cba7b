//! The subcommands of the `flexmodel` binary, one module each, and what
//! they share: the model and mesh arguments, loading, hook specs.

pub mod demo;
pub mod generate;
pub mod harvest;
pub mod inspect;
pub mod lens;
pub mod plot;
pub mod prompts;
pub mod run;
pub mod show;

use std::path::PathBuf;

use anyhow::{Context, Result, anyhow, bail};
use flexmodel::api::{FlexModel, Launch, Options};
use flexmodel::distributed::rank_from_env;
use flexmodel::hooks::{CpuLimit, Runtime, RuntimeConfig};
use flexmodel::models::parse_dtype;
use tch::Device;

#[derive(clap::Args, Clone)]
pub struct ModelArgs {
    /// Hugging Face model folder (config.json, *.safetensors, tokenizer.json).
    #[arg(long)]
    pub model: PathBuf,
    /// Weights dtype: f32, f16, bf16.
    #[arg(long, default_value = "f32")]
    pub dtype: String,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

/// How the model is split over ranks. Without a launcher, the ranks are
/// threads of this process; under `mpirun`/`srun` (MPI build), processes.
#[derive(clap::Args, Clone, Copy)]
pub struct MeshArgs {
    /// Tensor-parallel ranks (attention heads and MLP split).
    #[arg(long, default_value_t = 1)]
    pub tp: usize,
    /// Pipeline stages (contiguous runs of layers).
    #[arg(long, default_value_t = 1)]
    pub pp: usize,
    /// Data-parallel replicas (each batch of prompts split over them).
    #[arg(long, default_value_t = 1)]
    pub dp: usize,
    /// Seconds a rank waits for a peer before failing the run.
    #[arg(long, default_value_t = 120)]
    pub comm_timeout: u64,
    /// Tensor-parallel collectives through NCCL (CUDA devices; `nccl` build).
    #[arg(long)]
    pub nccl: bool,
}

impl MeshArgs {
    /// One rank.
    pub fn single() -> MeshArgs {
        MeshArgs {
            tp: 1,
            pp: 1,
            dp: 1,
            comm_timeout: 120,
            nccl: false,
        }
    }
}

fn device(s: &str) -> Result<Device> {
    let dev = match s {
        "cpu" => Device::Cpu,
        "cuda" => Device::Cuda(0),
        _ => s
            .strip_prefix("cuda:")
            .and_then(|n| n.parse().ok())
            .map(Device::Cuda)
            .ok_or_else(|| anyhow!("unknown device {s:?} (cpu, cuda, cuda:N)"))?,
    };
    if let Device::Cuda(i) = dev
        && (!tch::Cuda::is_available() || i >= tch::Cuda::device_count() as usize)
    {
        bail!("device {s} is not available on this machine");
    }
    Ok(dev)
}

/// Load the model on the mesh the arguments ask for: this process's rank
/// when launched by `mpirun`/`srun`, otherwise every rank in this process.
pub fn load(model: &ModelArgs, mesh: MeshArgs) -> Result<FlexModel> {
    let mut opts = Options::new(mesh.pp, mesh.dp, mesh.tp)?;
    opts.timeout = std::time::Duration::from_secs(mesh.comm_timeout);
    opts.nccl = mesh.nccl;
    opts.kind = parse_dtype(&model.dtype)?;
    opts.device = device(&model.device)?;
    if let Some((_, world)) = rank_from_env().filter(|(_, w)| *w > 1) {
        if mesh.tp * mesh.pp * mesh.dp != world {
            bail!(
                "--tp {} × --pp {} × --dp {} must equal the {world} launched ranks",
                mesh.tp,
                mesh.pp,
                mesh.dp
            );
        }
        opts.launch = Launch::Mpi;
        // The ranks on this machine share its cores.
        if let Some(local) = flexmodel::distributed::local_ranks_from_env() {
            tch::set_num_threads(flexmodel::distributed::threads_per_rank(local));
        }
    }
    FlexModel::load_with(&model.model, &opts)
        .with_context(|| format!("loading {}", model.model.display()))
}

/// `PLUGIN.wasm@PATTERN[=CONFIG]`.
pub fn parse_hook(spec: &str) -> Result<(PathBuf, String, String)> {
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

/// Load each `--hook` spec's plugin (fuel per call, hooks' seed) and
/// register it on `fm`.
pub fn register_hooks(fm: &mut FlexModel, specs: &[String], fuel: u64, seed: u64) -> Result<()> {
    let rt = Runtime::new(RuntimeConfig {
        cpu: CpuLimit::Fuel(fuel),
        seed,
        ..RuntimeConfig::default()
    })?;
    for spec in specs {
        let (path, pattern, config) = parse_hook(spec)?;
        let plugin = rt
            .load_file(&path)
            .with_context(|| format!("--hook {spec}"))?;
        fm.register_wasm(&plugin, &pattern, &config, &[])
            .with_context(|| format!("--hook {spec}"))?;
    }
    Ok(())
}

/// The vocabulary size (the logits' last dimension).
pub fn vocab(fm: &FlexModel) -> i64 {
    fm.vocab_size()
}
