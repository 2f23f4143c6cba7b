//! `GET /v1/jobs/{id}/events`: the job's status as server-sent events. An
//! event `status` (the same JSON as `GET /v1/jobs/{id}`) when the stream
//! opens and whenever the state or the queue position changes; the stream
//! ends after the job ends (done, failed or cancelled). A tenant holds at
//! most `--max-event-streams` open at once (429 `quota event_streams`).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State as AxState};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream::{self, Stream};

use super::http::{App, error, own_job, status_json};
use super::store::State;

/// A watched job's status is read at every change of any job's state, and
/// at least this often.
const POLL: Duration = Duration::from_secs(1);

pub async fn events(
    AxState(app): AxState<Arc<App>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let job = match own_job(&app, &headers, &id) {
        Ok(j) => j,
        Err(r) => return r,
    };
    let Some(open) = Open::new(&app, &job.tenant) else {
        return error(
            StatusCode::TOO_MANY_REQUESTS,
            format!(
                "quota event_streams: at most {} event streams open at once",
                app.quotas.max_event_streams
            ),
        );
    };
    Sse::new(watch(app, job.tenant, id, open))
        .keep_alive(KeepAlive::default())
        .into_response()
}

/// One of a tenant's open event streams, counted while it lives (a client
/// that goes away drops it).
struct Open {
    app: Arc<App>,
    tenant: String,
}

impl Open {
    /// Count a new stream of `tenant`'s, unless it holds its quota of them.
    fn new(app: &Arc<App>, tenant: &str) -> Option<Open> {
        let mut open = app.streams.lock().unwrap_or_else(|p| p.into_inner());
        let n = open.entry(tenant.to_string()).or_insert(0);
        if *n >= app.quotas.max_event_streams {
            return None;
        }
        *n += 1;
        Some(Open {
            app: app.clone(),
            tenant: tenant.to_string(),
        })
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        let mut open = self.app.streams.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&self.tenant) {
            *n = n.saturating_sub(1);
        }
    }
}

/// What the stream remembers: the last status sent, and whether it ended.
struct Watch {
    app: Arc<App>,
    changes: tokio::sync::watch::Receiver<u64>,
    tenant: String,
    id: String,
    last: Option<serde_json::Value>,
    ended: bool,
    _open: Open,
}

fn watch(
    app: Arc<App>,
    tenant: String,
    id: String,
    open: Open,
) -> impl Stream<Item = Result<Event, Infallible>> {
    let w = Watch {
        _open: open,
        changes: app.changes.subscribe(),
        app,
        tenant,
        id,
        last: None,
        ended: false,
    };
    stream::unfold(w, |mut w| async move {
        if w.ended {
            return None;
        }
        loop {
            w.changes.mark_unchanged();
            let job = match w.app.store.job(&w.tenant, &w.id) {
                Ok(Some(j)) => j,
                // Gone or unreadable: end the stream.
                _ => return None,
            };
            let Ok(v) = status_json(&w.app, &job) else {
                return None;
            };
            if w.last.as_ref() != Some(&v) {
                w.ended = !matches!(job.state, State::Queued | State::Running);
                let ev = Event::default().event("status").data(v.to_string());
                w.last = Some(v);
                return Some((Ok(ev), w));
            }
            let _ = tokio::time::timeout(POLL, w.changes.changed()).await;
        }
    })
}
