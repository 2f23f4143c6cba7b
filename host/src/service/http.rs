//! The HTTP/JSON API (axum), versioned under `/v1` (`docs/openapi.yaml`):
//!
//! - `POST /v1/jobs` → `202 {"id": …}`; `GET /v1/jobs/{id}` → `{"id",
//!   "state", "position" (queued), "error" (failed)}`; `GET
//!   /v1/jobs/{id}/result` → the safetensors file; `DELETE /v1/jobs/{id}`
//!   cancels; `GET /v1/model`; `GET /healthz`.
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
use super::store::{State, Store};
use super::worker::Bell;

/// Limits per tenant.
#[derive(Debug, Clone)]
pub struct Quotas {
    /// Jobs queued or running at once.
    pub max_active_jobs: i64,
    /// Bytes of a request body.
    pub max_body_bytes: usize,
}

impl Default for Quotas {
    fn default() -> Quotas {
        Quotas {
            max_active_jobs: 16,
            max_body_bytes: 1 << 20,
        }
    }
}

pub struct App {
    pub store: Arc<Store>,
    pub bell: Arc<Bell>,
    pub model: serde_json::Value,
    pub quotas: Quotas,
}

type Shared = Arc<App>;

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({"error": message.into()}))).into_response()
}

fn internal(e: impl std::fmt::Display) -> Response {
    tracing::error!("{e}");
    error(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
}

/// The tenant of the request's key, or the 401 to answer (the answer's
/// size does not matter on this path).
#[allow(clippy::result_large_err)]
fn tenant(app: &App, headers: &HeaderMap) -> Result<String, Response> {
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

fn not_found() -> Response {
    error(StatusCode::NOT_FOUND, "no such job")
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
    if let Err(e) = JobRequest::parse(text) {
        return error(StatusCode::BAD_REQUEST, e.to_string());
    }
    let mut raw = [0u8; 12];
    if let Err(e) = getrandom::fill(&mut raw) {
        return internal(e);
    }
    let id = hex::encode(raw);
    match app.store.add_job(&id, &t, text, app.quotas.max_active_jobs) {
        Ok(Ok(())) => {}
        Ok(Err(n)) => {
            return error(
                StatusCode::TOO_MANY_REQUESTS,
                format!(
                    "quota active_jobs: {n} jobs queued or running (at most {})",
                    app.quotas.max_active_jobs
                ),
            );
        }
        Err(e) => return internal(e),
    }
    app.bell.ring();
    (StatusCode::ACCEPTED, Json(json!({"id": id}))).into_response()
}

#[allow(clippy::result_large_err)]
fn status_json(app: &App, job: &super::store::Job) -> Result<serde_json::Value, Response> {
    let mut v = json!({"id": job.id, "state": job.state});
    if job.state == State::Queued {
        v["position"] = app.store.position(&job.id).map_err(internal)?.into();
    }
    if let Some(e) = &job.error {
        v["error"] = serde_json::from_str(e).unwrap_or_else(|_| json!({"message": e}));
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

async fn result(
    AxState(app): AxState<Shared>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let t = match tenant(&app, &headers) {
        Ok(t) => t,
        Err(r) => return r,
    };
    match app.store.job(&t, &id) {
        Ok(Some(job)) if job.state == State::Done => {
            match tokio::fs::read(app.store.result_path(&job.id)).await {
                Ok(bytes) => (
                    StatusCode::OK,
                    [(header::CONTENT_TYPE, "application/octet-stream")],
                    bytes,
                )
                    .into_response(),
                Err(e) => internal(e),
            }
        }
        Ok(Some(job)) => error(
            StatusCode::CONFLICT,
            format!("job {} is {:?}: no result", job.id, job.state).to_lowercase(),
        ),
        Ok(None) => not_found(),
        Err(e) => internal(e),
    }
}

async fn cancel(
    AxState(app): AxState<Shared>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    answer_status(&app, &headers, |store, t| store.cancel(t, &id))
}

async fn model(AxState(app): AxState<Shared>, headers: HeaderMap) -> Response {
    if let Err(r) = tenant(&app, &headers) {
        return r;
    }
    Json(app.model.clone()).into_response()
}

pub fn router(app: Shared) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/v1/model", get(model))
        .route("/v1/jobs", post(submit))
        .route("/v1/jobs/{id}", get(status).delete(cancel))
        .route("/v1/jobs/{id}/result", get(result))
        .with_state(app)
}
