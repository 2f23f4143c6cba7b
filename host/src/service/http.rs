//! The HTTP/JSON API (axum), versioned under `/v1` (`docs/openapi.yaml`):
//!
//! - `POST /v1/jobs` → `202 {"id": …}`; `GET /v1/jobs/{id}` → `{"id",
//!   "state", "position" (queued), "error" (failed)}`; `GET
//!   /v1/jobs/{id}/result` → the safetensors file; `GET
//!   /v1/jobs/{id}/events` → server-sent events; `DELETE /v1/jobs/{id}`
//!   cancels (a running job stops at its hooks' next call); `GET
//!   /v1/model`; `GET /healthz`.
//! - Every `/v1` request carries `Authorization: Bearer fm_<id>_<secret>`:
//!   missing or wrong → 401. Another tenant's job → 404, the same answer as
//!   a job that does not exist. Over a quota → 429 naming it.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State as AxState};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;

use super::job::JobRequest;
use super::keys;
use super::quota::Quota;
use super::store::{State, Store};
use super::worker::{Bell, Changes, Running};

/// Limits of a request.
#[derive(Debug, Clone)]
pub struct Quotas {
    /// Bytes of a request body (an uploaded component travels in it).
    pub max_body_bytes: usize,
    /// Event streams a tenant may hold open at once.
    pub max_event_streams: usize,
}

impl Default for Quotas {
    fn default() -> Quotas {
        Quotas {
            max_body_bytes: 32 << 20,
            max_event_streams: 64,
        }
    }
}

pub struct App {
    pub store: Arc<Store>,
    pub bell: Arc<Bell>,
    pub running: Arc<Running>,
    /// Bumped at every change of a job's state (wakes event streams).
    pub changes: Arc<Changes>,
    pub model: serde_json::Value,
    pub quotas: Quotas,
    /// The server's limits per tenant.
    pub limits: Quota,
    /// The plugins' runtime and the trust policy (uploads are checked and
    /// compiled when submitted).
    pub rt: Arc<crate::hooks::Runtime>,
    pub resolver: Arc<crate::package::resolve::Resolver>,
    pub uploads: Arc<super::uploads::Uploads>,
    /// Uploads being checked and compiled: one per tenant, a few in all.
    pub gate: super::uploads::Gate,
    /// Event streams open, per tenant.
    pub streams: std::sync::Mutex<std::collections::HashMap<String, usize>>,
}

type Shared = Arc<App>;

pub(crate) fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({"error": message.into()}))).into_response()
}

pub(crate) fn internal(e: impl std::fmt::Display) -> Response {
    tracing::error!("{e}");
    error(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
}

/// The tenant of the request's key, or the 401 to answer (the answer's
/// size does not matter on this path).
#[allow(clippy::result_large_err)]
pub(crate) fn tenant(app: &App, headers: &HeaderMap) -> Result<String, Response> {
    let unauthorized = || error(StatusCode::UNAUTHORIZED, "missing or invalid API key");
    let key = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(unauthorized)?;
    match keys::tenant_of(&app.store, key.trim()) {
        Ok(Some(t)) => Ok(t),
        Ok(None) => Err(unauthorized()),
        Err(e) => Err(internal(e)),
    }
}

pub(crate) fn not_found() -> Response {
    error(StatusCode::NOT_FOUND, "no such job")
}

fn over_quota(n: i64, max: i64) -> Response {
    error(
        StatusCode::TOO_MANY_REQUESTS,
        format!("quota active_jobs: {n} jobs queued or running (at most {max})"),
    )
}

/// Check every uploaded component of `req` against the trust policy and
/// compile it (cached for the worker), in `tenant`'s turn at the gate; a
/// refusal is the job's 400.
async fn precompile(app: &Shared, tenant: &str, req: &JobRequest) -> Result<(), Response> {
    for (i, h) in req.hooks.iter().enumerate() {
        let Some(text) = h.component.clone() else {
            continue;
        };
        if app.uploads.known(&text) {
            continue;
        }
        let Some(_pass) = app.gate.enter(tenant).await else {
            return Err(internal("the upload gate is closed"));
        };
        let (rt, resolver, uploads) = (app.rt.clone(), app.resolver.clone(), app.uploads.clone());
        let checked =
            tokio::task::spawn_blocking(move || uploads.accept(&rt, &resolver, &text).map(|_| ()))
                .await;
        match checked {
            Ok(Ok(())) => {}
            Ok(Err(m)) => return Err(error(StatusCode::BAD_REQUEST, format!("hooks[{i}]: {m}"))),
            Err(e) => return Err(internal(e)),
        }
    }
    Ok(())
}

async fn submit(AxState(app): AxState<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    let t = match tenant(&app, &headers) {
        Ok(t) => t,
        Err(r) => return r,
    };
    if body.len() > app.quotas.max_body_bytes {
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "quota body_bytes: the body is over {} bytes",
                app.quotas.max_body_bytes
            ),
        );
    }
    let Ok(text) = std::str::from_utf8(&body) else {
        return error(StatusCode::BAD_REQUEST, "the body is not UTF-8");
    };
    let req = match JobRequest::parse(text) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    let max_active = match app.store.quota(&t) {
        Ok(q) => q.under(&app.limits).active_jobs.unwrap_or(i64::MAX),
        Err(e) => return internal(e),
    };
    // Uploaded components are checked and compiled here, off the worker
    // (a compile bomb costs its bounded compile, never the model's time),
    // once the tenant is under its quota (checked again, atomically, below).
    if req.hooks.iter().any(|h| h.component.is_some()) {
        match app.store.active(&t) {
            Ok(n) if n >= max_active => return over_quota(n, max_active),
            Ok(_) => {}
            Err(e) => return internal(e),
        }
        if let Err(r) = precompile(&app, &t, &req).await {
            return r;
        }
    }
    let mut raw = [0u8; 12];
    if let Err(e) = getrandom::fill(&mut raw) {
        return internal(e);
    }
    let id = hex::encode(raw);
    match app.store.add_job(&id, &t, text, max_active) {
        Ok(Ok(())) => {}
        Ok(Err(n)) => return over_quota(n, max_active),
        Err(e) => return internal(e),
    }
    app.bell.ring();
    app.changes.send_modify(|n| *n += 1);
    (StatusCode::ACCEPTED, Json(json!({"id": id}))).into_response()
}

#[allow(clippy::result_large_err)]
pub(crate) fn status_json(
    app: &App,
    job: &super::store::Job,
) -> Result<serde_json::Value, Response> {
    let mut v = json!({"id": job.id, "state": job.state});
    if job.state == State::Queued {
        v["position"] = app.store.position(&job.id).map_err(internal)?.into();
    }
    if let Some(e) = &job.error {
        v["error"] = serde_json::from_str(e).unwrap_or_else(|_| json!({"message": e}));
    }
    if job.attempts > 1 {
        v["attempts"] = job.attempts.into();
    }
    if let Some(b) = job.batch {
        v["batch_jobs"] = b.into();
    }
    if let (Some(c), Some(s)) = (job.created_ms, job.started_ms) {
        v["queued_ms"] = (s - c).max(0).into();
    }
    if let (Some(s), Some(f)) = (job.started_ms, job.finished_ms) {
        v["run_ms"] = (f - s).max(0).into();
    }
    Ok(v)
}

/// A job looked up for the request's tenant (`find`), answered with its
/// status: 401 without a valid key, 404 when it is not the tenant's.
fn answer_status(
    app: &App,
    headers: &HeaderMap,
    find: impl FnOnce(&Store, &str) -> Result<Option<super::store::Job>, super::ServiceError>,
) -> Response {
    let t = match tenant(app, headers) {
        Ok(t) => t,
        Err(r) => return r,
    };
    match find(&app.store, &t) {
        Ok(Some(job)) => match status_json(app, &job) {
            Ok(v) => Json(v).into_response(),
            Err(r) => r,
        },
        Ok(None) => not_found(),
        Err(e) => internal(e),
    }
}

async fn status(
    AxState(app): AxState<Shared>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    answer_status(&app, &headers, |store, t| store.job(t, &id))
}

/// The request's tenant's job `id`: 401 without a valid key, 404 when it
/// is not the tenant's.
#[allow(clippy::result_large_err)]
pub(crate) fn own_job(
    app: &App,
    headers: &HeaderMap,
    id: &str,
) -> Result<super::store::Job, Response> {
    let t = tenant(app, headers)?;
    match app.store.job(&t, id) {
        Ok(Some(job)) => Ok(job),
        Ok(None) => Err(not_found()),
        Err(e) => Err(internal(e)),
    }
}

async fn result(
    AxState(app): AxState<Shared>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let job = match own_job(&app, &headers, &id) {
        Ok(j) => j,
        Err(r) => return r,
    };
    if job.state != State::Done {
        return error(
            StatusCode::CONFLICT,
            format!("job {} is {:?}: no result", job.id, job.state).to_lowercase(),
        );
    }
    // Streamed from the file: many large downloads at once cost no memory.
    let path = app.store.result_path(&job.id);
    let file = match tokio::fs::File::open(&path).await {
        Ok(f) => f,
        Err(e) => return internal(format!("{}: {e}", path.display())),
    };
    let len = match file.metadata().await {
        Ok(m) => m.len(),
        Err(e) => return internal(e),
    };
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (header::CONTENT_LENGTH, len.to_string()),
        ],
        axum::body::Body::from_stream(tokio_util::io::ReaderStream::with_capacity(file, 1 << 20)),
    )
        .into_response()
}

async fn cancel(
    AxState(app): AxState<Shared>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let running = app.running.clone();
    answer_status(&app, &headers, |store, t| {
        let job = store.cancel(t, &id)?;
        if let Some(stop) = job
            .as_ref()
            .and_then(|j| running.lock().ok()?.get(&j.id).cloned())
        {
            // A running job stops at its hooks' next call.
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        Ok(job)
    })
}

async fn model(AxState(app): AxState<Shared>, headers: HeaderMap) -> Response {
    if let Err(r) = tenant(&app, &headers) {
        return r;
    }
    Json(app.model.clone()).into_response()
}

pub fn router(app: Shared) -> Router {
    // Past axum's default of 2 MiB: an uploaded component travels in a body.
    let limit = axum::extract::DefaultBodyLimit::max(app.quotas.max_body_bytes + 1);
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/v1/model", get(model))
        .route("/v1/jobs", post(submit))
        .route("/v1/jobs/{id}", get(status).delete(cancel))
        .route("/v1/jobs/{id}/result", get(result))
        .route("/v1/jobs/{id}/events", get(super::events::events))
        .layer(limit)
        .with_state(app)
}
