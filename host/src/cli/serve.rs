//! `flexmodel serve`: the multi-tenant hook service (see
//! `flexmodel::service`), and `flexmodel serve keys add|list|revoke`.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use flexmodel::hooks::{CpuLimit, Runtime, RuntimeConfig};
use flexmodel::service::{self, ServeConfig, http::Quotas, keys, quota::Quota, store::Store};

use super::{MeshArgs, ModelArgs, PluginArgs};

#[derive(clap::Args)]
pub struct ServeArgs {
    #[command(subcommand)]
    pub keys: Option<ServeCmd>,
    /// Hugging Face model folder (serving).
    #[arg(long)]
    pub model: Option<PathBuf>,
    #[arg(long, default_value = "f32")]
    pub dtype: String,
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Address to listen on (port 0: any free port, printed).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// The service's state: its database, keys, results.
    #[arg(long)]
    pub state: Option<PathBuf>,
    /// Fuel per hook call (a tenant's `fuel_per_call` quota may lower it).
    #[arg(long, default_value_t = 4_000_000_000)]
    pub fuel: u64,
    /// Event streams (`GET /v1/jobs/{id}/events`) a tenant may hold open at
    /// once.
    #[arg(long, default_value_t = 64)]
    pub max_event_streams: usize,
    /// Jobs a tenant may have queued or running at once.
    #[arg(long, default_value_t = 16)]
    pub max_active_jobs: i64,
    /// Linear memory of one plugin instance, bytes.
    #[arg(long, default_value_t = 256 << 20)]
    pub max_memory_bytes: u64,
    /// Bytes of one job's result.
    #[arg(long, default_value_t = 256 << 20)]
    pub max_output_bytes: u64,
    /// Wall time of one job, milliseconds (checked at its hooks' calls).
    #[arg(long, default_value_t = 600_000)]
    pub max_wall_ms: u64,
    /// Most jobs run together in one padded batch (co-tenancy batching;
    /// 1: one job at a time).
    #[arg(long, default_value_t = 8)]
    pub batch_jobs: usize,
    /// Most prompts in one batch.
    #[arg(long, default_value_t = 64)]
    pub batch_rows: usize,
    /// Milliseconds a forward job waits for others to share its batch
    /// (0: it shares with those already queued only).
    #[arg(long, default_value_t = 0)]
    pub batch_wait_ms: u64,
    /// Serve HTTPS: the certificate chain (PEM).
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// Serve HTTPS: the private key (PEM).
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Without `--trust`: run any plugin, signed or not (a private
    /// server). A shared server names its trust policy instead.
    #[arg(long, conflicts_with = "trust")]
    pub allow_unsigned: bool,
    #[command(flatten)]
    pub plugins: PluginArgs,
    #[command(flatten)]
    pub mesh: MeshArgs,
}

#[derive(Subcommand)]
pub enum ServeCmd {
    /// Manage API keys.
    #[command(subcommand)]
    Keys(KeysCmd),
}

#[derive(Subcommand)]
pub enum KeysCmd {
    /// Make a key for a tenant; printed once (only its hash is kept).
    Add {
        #[arg(long)]
        state: PathBuf,
        #[arg(long)]
        tenant: String,
        /// The tenant's limits, NAME=VALUE, repeatable (active_jobs,
        /// fuel_per_call, memory_bytes, output_bytes, wall_ms; k/M/G
        /// suffixes); the lower of these and the server's applies.
        #[arg(long = "quota")]
        quota: Vec<String>,
    },
    /// List keys (ids, tenants; never secrets).
    List {
        #[arg(long)]
        state: PathBuf,
    },
    /// Revoke a key (by id, or the whole key); effective on the next request.
    Revoke {
        #[arg(long)]
        state: PathBuf,
        key: String,
    },
}

pub fn serve(a: &ServeArgs) -> Result<()> {
    if let Some(ServeCmd::Keys(k)) = &a.keys {
        return keys_cmd(k);
    }
    let (Some(model), Some(state)) = (&a.model, &a.state) else {
        bail!("serve needs --model DIR and --state DIR");
    };
    if a.plugins.trust.is_none() && !a.allow_unsigned {
        bail!(
            "serve runs its tenants' plugins: give --trust trust.toml (which signers, which \
             namespaces), or --allow-unsigned to run any plugin"
        );
    }
    let model_args = ModelArgs {
        model: model.clone(),
        dtype: a.dtype.clone(),
        device: a.device.clone(),
    };
    let fm = super::load(&model_args, a.mesh)?;
    let rt = Runtime::new(RuntimeConfig {
        cpu: CpuLimit::Fuel(a.fuel),
        max_memory_bytes: a.max_memory_bytes as usize,
        ..RuntimeConfig::default()
    })?;
    let resolver = a.plugins.resolver()?;
    let cfg = ServeConfig {
        listen: a.listen,
        state: state.clone(),
        quotas: Quotas {
            max_event_streams: a.max_event_streams,
            ..Quotas::default()
        },
        limits: Quota {
            active_jobs: Some(a.max_active_jobs),
            fuel_per_call: Some(a.fuel),
            memory_bytes: Some(a.max_memory_bytes),
            output_bytes: Some(a.max_output_bytes),
            wall_ms: Some(a.max_wall_ms),
        },
        batch_jobs: a.batch_jobs.max(1),
        batch_rows: a.batch_rows.max(1),
        batch_wait: std::time::Duration::from_millis(a.batch_wait_ms),
        tls: a.tls_cert.clone().zip(a.tls_key.clone()),
        architecture: architecture(model),
    };
    let scheme = if cfg.tls.is_some() { "https" } else { "http" };
    service::serve(fm, rt, resolver, cfg, |addr| {
        println!("listening on {scheme}://{addr}");
    })
    .context("serve")?;
    Ok(())
}

/// `architectures[0]` (else `model_type`) of the model folder's config.
fn architecture(model: &std::path::Path) -> String {
    std::fs::read_to_string(model.join("config.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|c| {
            c["architectures"][0]
                .as_str()
                .or(c["model_type"].as_str())
                .map(str::to_string)
        })
        .unwrap_or_default()
}

fn keys_cmd(k: &KeysCmd) -> Result<()> {
    match k {
        KeysCmd::Add {
            state,
            tenant,
            quota,
        } => {
            let q = Quota::parse(quota)?;
            let store = Store::open(state)?;
            if !quota.is_empty() {
                store.set_quota(tenant, &q)?;
            }
            println!("{}", keys::add(&store, tenant)?);
        }
        KeysCmd::List { state } => {
            let store = Store::open(state)?;
            for k in store.keys()? {
                println!(
                    "{}  {}  {}",
                    k.id,
                    k.tenant,
                    if k.revoked { "revoked" } else { "live" }
                );
            }
        }
        KeysCmd::Revoke { state, key } => {
            let store = Store::open(state)?;
            let id = key
                .strip_prefix("fm_")
                .and_then(|r| r.split('_').next())
                .unwrap_or(key);
            if !store.revoke(id)? {
                bail!("no key {id}");
            }
            println!("revoked {id}");
        }
    }
    Ok(())
}
