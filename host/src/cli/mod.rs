//! The subcommands of the `flexmodel` binary, one module each, and what
//! they share: the model and mesh arguments, loading, hook specs.

pub mod demo;
pub mod generate;
pub mod harvest;
pub mod inspect;
pub mod lens;
pub mod plot;
pub mod plugin;
pub mod prompts;
pub mod remote;
pub mod run;
pub mod serve;
pub mod show;

use std::path::PathBuf;

use anyhow::{Context, Result, anyhow, bail};
use flexmodel::api::{FlexModel, Launch, Options, PluginRecord};
use flexmodel::distributed::rank_from_env;
use flexmodel::hooks::{CpuLimit, Runtime, RuntimeConfig};
use flexmodel::models::parse_dtype;
use flexmodel::package::TrustPolicy;
use flexmodel::package::lock::Lockfile;
use flexmodel::package::registry::Registries;
use flexmodel::package::resolve::Resolver;
use flexmodel::package::store::Store;
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
        && i >= flexmodel::models::cuda::device_count()
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

/// Where plugins come from and whom to trust: shared by every command that
/// takes `--hook`.
#[derive(clap::Args, Clone, Default)]
pub struct PluginArgs {
    /// Trust policy (trust.toml): which keys are trusted for which
    /// namespace, and whether unsigned plugins run. Without it: unsigned
    /// plugins run.
    #[arg(long)]
    pub trust: Option<PathBuf>,
    /// Registry of package references (HOST:PORT[/PREFIX]) when no mapping
    /// file names one (also FLEXMODEL_REGISTRY).
    #[arg(long)]
    pub registry: Option<String>,
    /// Namespace → registry mapping file (registries.toml).
    #[arg(long)]
    pub registries: Option<PathBuf>,
    /// Plain HTTP to a non-loopback registry.
    #[arg(long)]
    pub insecure: bool,
    /// Lockfile pinning package references to digests.
    #[arg(long, default_value = flexmodel::package::lock::FILE)]
    pub lock: PathBuf,
    /// Refuse anything the lockfile does not pin.
    #[arg(long)]
    pub locked: bool,
}

impl PluginArgs {
    pub fn resolver(&self) -> Result<Resolver> {
        let lock = Lockfile::read(&self.lock)?;
        if self.locked && lock.is_none() {
            bail!("--locked: {} does not exist", self.lock.display());
        }
        Ok(Resolver {
            trust: TrustPolicy::from_arg(self.trust.as_deref())?,
            registries: Registries::new(
                self.registries.as_deref(),
                self.registry.as_deref(),
                self.insecure,
            )?,
            store: Store::default_location(),
            lock,
            locked: self.locked,
            max_bytes: RuntimeConfig::default().compile.max_component_bytes,
        })
    }
}

/// The plugins a run registered: `flexmodel.plugins` in its output file,
/// a JSON list of `{name, version, digest, source, signed_by}`.
#[derive(Default)]
pub struct Provenance(Vec<PluginRecord>);

impl Provenance {
    pub fn metadata(&self) -> std::collections::BTreeMap<String, String> {
        let mut m = std::collections::BTreeMap::new();
        if !self.0.is_empty() {
            m.insert(
                "flexmodel.plugins".to_string(),
                serde_json::to_string(&self.0).unwrap_or_default(),
            );
        }
        m
    }
}

/// Register each `--hook` spec (a file or a package reference, checked
/// against the trust policy and the lockfile; fuel per call, hooks' seed).
pub fn register_hooks(
    fm: &mut FlexModel,
    specs: &[String],
    fuel: u64,
    seed: u64,
    plugins: &PluginArgs,
) -> Result<Provenance> {
    let mut prov = Provenance::default();
    if specs.is_empty() {
        return Ok(prov);
    }
    let resolver = plugins.resolver()?;
    let rt = Runtime::new(RuntimeConfig {
        cpu: CpuLimit::Fuel(fuel),
        seed,
        ..RuntimeConfig::default()
    })?;
    for spec in specs {
        let record = fm
            .register_spec(&rt, &resolver, spec, &[])
            .with_context(|| format!("--hook {spec}"))?;
        prov.0.push(record);
    }
    Ok(prov)
}

/// The vocabulary size (the logits' last dimension).
pub fn vocab(fm: &FlexModel) -> i64 {
    fm.vocab_size()
}
