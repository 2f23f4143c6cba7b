//! `flexmodel serve`: a model loaded once, many tenants running their hooks
//! against it through an HTTP/JSON API, none able to harm it or each other.
//!
//! - [`store`]: tenants' keys (hashes), jobs and their states in SQLite
//!   (WAL) under `--state`; results written atomically next to it.
//! - [`keys`]: API keys `fm_<id>_<secret>`.
//! - [`job`]: the body of `POST /v1/jobs`, checked before it is accepted.
//! - [`http`]: the axum router, auth (401), tenant isolation (404),
//!   quotas (429).
//! - [`quota`]: a tenant's limits under the server's.
//! - [`follow`]: under `mpirun`, rank 0 serves and plans each batch; every
//!   other rank runs the same batches on its shard.
//! - [`client`]: a blocking client (`flexmodel remote run`, the benchmark).
//! - [`events`]: `GET /v1/jobs/{id}/events`, server-sent events.
//! - [`worker`]: the thread that owns the model and takes jobs in order;
//!   [`runner`]: running them, compatible jobs of several tenants in one
//!   padded batch, each job's hooks confined to its rows, with its own
//!   plugin instances resolved under the server's trust policy.

pub mod client;
pub mod events;
pub mod follow;
pub mod http;
pub mod job;
pub mod keys;
pub mod quota;
pub mod runner;
pub mod store;
pub mod uploads;
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

/// Uploads checked and compiled at once (each tenant's one at a time).
const COMPILES: usize = 2;

/// What `serve` needs besides the loaded model.
pub struct ServeConfig {
    pub listen: SocketAddr,
    pub state: PathBuf,
    pub quotas: http::Quotas,
    /// The server's limits per tenant (a tenant's own apply under them).
    pub limits: quota::Quota,
    /// Most jobs in one batch (1: one at a time) and most prompts.
    pub batch_jobs: usize,
    pub batch_rows: usize,
    /// How long a forward job waits for others to share its batch.
    pub batch_wait: std::time::Duration,
    /// Serve HTTPS with this certificate chain and key (PEM files).
    pub tls: Option<(PathBuf, PathBuf)>,
    /// The checkpoint's architecture (`config.json`), for `GET /v1/model`.
    pub architecture: String,
}

/// What `GET /v1/model` answers.
fn model_info(fm: &FlexModel, architecture: &str) -> serde_json::Value {
    let o = fm.options();
    serde_json::json!({
        "architecture": architecture,
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
    if !fm.is_root() {
        return follow::follow(fm, rt, resolver);
    }
    // A file-size limit (`ulimit -f`) must fail the write that meets it
    // (EFBIG: that job fails with reason `storage`), not kill the server.
    // SAFETY: setting a signal's disposition to "ignore" has no handler.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
    }
    let store = Arc::new(store::Store::open(&cfg.state)?);
    let recovered = store.recover()?;
    if recovered > 0 {
        tracing::info!("{recovered} interrupted jobs recovered");
    }
    let resolver = Arc::new(resolver);
    let uploads = Arc::new(uploads::Uploads::default());
    let bell = Arc::new(worker::Bell::default());
    let running = Arc::new(worker::Running::default());
    let changes = Arc::new(worker::Changes::new(0));
    let app = Arc::new(http::App {
        store: store.clone(),
        bell: bell.clone(),
        running: running.clone(),
        changes: changes.clone(),
        model: model_info(&fm, &cfg.architecture),
        quotas: cfg.quotas,
        limits: cfg.limits,
        rt: rt.clone(),
        resolver: resolver.clone(),
        uploads: uploads.clone(),
        gate: uploads::Gate::new(COMPILES),
        streams: Default::default(),
    });
    // The HTTP side on its own thread; the worker (which owns the model,
    // not `Send`: its ranks' communicators) on this one.
    let (tx, rx) = std::sync::mpsc::channel();
    let listen = cfg.listen;
    let tls = cfg.tls.clone();
    // One TLS crypto provider for the process (several may be compiled in).
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
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
                    let io =
                        |what: &str, e: std::io::Error| ServiceError::Io(format!("{what}: {e}"));
                    let listener = std::net::TcpListener::bind(listen)
                        .map_err(|e| io(&format!("listening on {listen}"), e))?;
                    let addr = listener.local_addr().map_err(|e| io("listening", e))?;
                    let make = http::router(app).into_make_service();
                    // Small responses (a status, an event) go out at once,
                    // not after the client's delayed ACK (~40 ms).
                    use axum_server::accept::NoDelayAcceptor;
                    match tls {
                        None => {
                            let _ = ready_tx.send(Ok(addr));
                            axum_server::from_tcp(listener)
                                .map_err(|e| io("listening", e))?
                                .acceptor(NoDelayAcceptor)
                                .serve(make)
                                .await
                                .map_err(|e| io("serving", e))
                        }
                        Some((cert, key)) => {
                            let config =
                                axum_server::tls_rustls::RustlsConfig::from_pem_file(&cert, &key)
                                    .await
                                    .map_err(|e| {
                                        io(
                                            &format!("TLS {} / {}", cert.display(), key.display()),
                                            e,
                                        )
                                    })?;
                            let _ = ready_tx.send(Ok(addr));
                            axum_server::tls_rustls::from_tcp_rustls(listener, config)
                                .map_err(|e| io("listening", e))?
                                .map(|tls| tls.acceptor(NoDelayAcceptor))
                                .serve(make)
                                .await
                                .map_err(|e| io("serving", e))
                        }
                    }
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
        uploads,
        store,
        bell,
        running,
        changes,
        limits: cfg.limits,
        batch_jobs: cfg.batch_jobs,
        batch_rows: cfg.batch_rows,
        batch_wait: cfg.batch_wait,
        last_batch: 0,
    }
    .run();
    Ok(())
}
