//! `flexmodel serve`: a model loaded once, many tenants running their hooks
//! against it through an HTTP/JSON API, none able to harm it or each other.
//!
//! - [`store`]: tenants' keys (hashes), jobs and their states in SQLite
//!   (WAL) under `--state`; results written atomically next to it.
//! - [`keys`]: API keys `fm_<id>_<secret>`.
//! - [`job`]: the body of `POST /v1/jobs`, checked before it is accepted.
//! - [`http`]: the axum router, auth (401), tenant isolation (404),
//!   quotas (429).
//! - [`worker`]: the thread that owns the model and runs jobs in order,
//!   each with its own plugin instances, resolved under the server's trust
//!   policy.

pub mod http;
pub mod job;
pub mod keys;
pub mod store;
pub mod worker;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use crate::api::FlexModel;
use crate::hooks::Runtime;
use crate::package::resolve::Resolver;

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("job store: {0}")]
    Store(String),
    #[error("{0}")]
    Input(String),
    #[error("{0}")]
    Io(String),
}

/// What `serve` needs besides the loaded model.
pub struct ServeConfig {
    pub listen: SocketAddr,
    pub state: PathBuf,
    pub quotas: http::Quotas,
}

/// What `GET /v1/model` answers.
fn model_info(fm: &FlexModel) -> serde_json::Value {
    let o = fm.options();
    serde_json::json!({
        "vocab_size": fm.vocab_size(),
        "layout": {"tp": o.mesh.tp, "pp": o.mesh.pp, "dp": o.mesh.dp},
        "dtype": format!("{:?}", o.kind).to_lowercase(),
        "hook_points": fm.points(1, 1),
    })
}

/// Serve until the process is stopped. Jobs left running by a previous
/// server (killed) fail with reason `interrupted`, or are re-queued when
/// they asked for retries.
pub fn serve(
    fm: FlexModel,
    rt: Arc<Runtime>,
    resolver: Resolver,
    cfg: ServeConfig,
    ready: impl FnOnce(SocketAddr),
) -> Result<(), ServiceError> {
    let store = Arc::new(store::Store::open(&cfg.state)?);
    let recovered = store.recover()?;
    if recovered > 0 {
        tracing::info!("{recovered} interrupted jobs recovered");
    }
    let bell = Arc::new(worker::Bell::default());
    let app = Arc::new(http::App {
        store: store.clone(),
        bell: bell.clone(),
        model: model_info(&fm),
        quotas: cfg.quotas,
    });
    // The HTTP side on its own thread; the worker (which owns the model,
    // not `Send`: its ranks' communicators) on this one.
    let (tx, rx) = std::sync::mpsc::channel();
    let listen = cfg.listen;
    std::thread::Builder::new()
        .name("flexmodel-http".into())
        .spawn(move || {
            let ready_tx = tx.clone();
            let served = (move || {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .map_err(|e| ServiceError::Io(format!("async runtime: {e}")))?;
                rt.block_on(async move {
                    let listener = tokio::net::TcpListener::bind(listen)
                        .await
                        .map_err(|e| ServiceError::Io(format!("listening on {listen}: {e}")))?;
                    let addr = listener
                        .local_addr()
                        .map_err(|e| ServiceError::Io(e.to_string()))?;
                    let _ = ready_tx.send(Ok(addr));
                    axum::serve(listener, http::router(app))
                        .await
                        .map_err(|e| ServiceError::Io(format!("serving: {e}")))
                })
            })();
            if let Err(e) = served {
                let _ = tx.send(Err(e));
            }
        })
        .map_err(|e| ServiceError::Io(format!("http thread: {e}")))?;
    let addr = rx
        .recv()
        .map_err(|_| ServiceError::Io("the HTTP thread ended".into()))??;
    ready(addr);
    worker::Worker {
        fm,
        rt,
        resolver,
        store,
        bell,
    }
    .run();
    Ok(())
}
