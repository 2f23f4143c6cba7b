//! `flexmodel serve`: the multi-tenant hook service (see
//! `flexmodel::service`), and `flexmodel serve keys add|list|revoke`.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use flexmodel::hooks::{CpuLimit, Runtime, RuntimeConfig};
use flexmodel::service::{self, ServeConfig, http::Quotas, keys, store::Store};

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
    /// Fuel per hook call.
    #[arg(long, default_value_t = 4_000_000_000)]
    pub fuel: u64,
    /// Jobs a tenant may have queued or running at once.
    #[arg(long, default_value_t = 16)]
    pub max_active_jobs: i64,
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
    let model_args = ModelArgs {
        model: model.clone(),
        dtype: a.dtype.clone(),
        device: a.device.clone(),
    };
    let fm = super::load(&model_args, a.mesh)?;
    let rt = Runtime::new(RuntimeConfig {
        cpu: CpuLimit::Fuel(a.fuel),
        ..RuntimeConfig::default()
    })?;
    let resolver = a.plugins.resolver()?;
    let cfg = ServeConfig {
        listen: a.listen,
        state: state.clone(),
        quotas: Quotas {
            max_active_jobs: a.max_active_jobs,
            ..Quotas::default()
        },
    };
    service::serve(fm, rt, resolver, cfg, |addr| {
        println!("listening on http://{addr}");
    })
    .context("serve")?;
    Ok(())
}

fn keys_cmd(k: &KeysCmd) -> Result<()> {
    match k {
        KeysCmd::Add { state, tenant } => {
            let store = Store::open(state)?;
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
