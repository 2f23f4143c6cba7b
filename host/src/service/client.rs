//! A client of `flexmodel serve` (blocking, reqwest): submit a job, follow
//! its event stream until it ends, save its result. `flexmodel remote run`
//! and `service-bench` use it.
//!
//! - Waiting follows `GET /v1/jobs/{id}/events` (no polling delay: the
//!   end arrives as it happens); a stream cut before the job ended (a
//!   server restarted) is opened again, for up to [`RECONNECT`].
//! - A result is streamed to a temporary file next to its destination and
//!   renamed into place: whole or not at all, never all in memory.
//! - Every refusal is one line: `server answered 429: quota active_jobs …`.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::time::{Duration, Instant};

use reqwest::blocking::{Client as Http, RequestBuilder, Response};

/// How long a cut event stream is tried again before giving up.
pub const RECONNECT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{0}")]
    Connect(String),
    /// The server refused a request (401, 404, 429, 400, …).
    #[error("server answered {status}: {message}")]
    Refused { status: u16, message: String },
    #[error("job {id} failed ({reason}): {message}")]
    Failed {
        id: String,
        reason: String,
        message: String,
    },
    #[error("job {0} was cancelled")]
    Cancelled(String),
    #[error("job {id} did not end within {secs} s")]
    Timeout { id: String, secs: u64 },
    #[error("{0}")]
    Io(String),
    #[error("unexpected answer from the server: {0}")]
    Protocol(String),
}

pub struct Client {
    http: Http,
    base: String,
    auth: String,
}

impl Client {
    /// A client of the server at `base` (`http://…` or `https://…`) with
    /// API key `key`; `ca_pem` adds a trusted CA (a self-signed server).
    pub fn new(base: &str, key: &str, ca_pem: Option<&[u8]>) -> Result<Client, ClientError> {
        // The blocking client's timeout bounds each wait (for the answer's
        // head, then each read of its body), not a whole download: a large
        // result takes as long as it takes; a server silent for a minute is
        // given up (the event stream sends a keep-alive every 15 s).
        let mut b = Http::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(60));
        if let Some(pem) = ca_pem {
            let cert = reqwest::Certificate::from_pem(pem)
                .map_err(|e| ClientError::Io(format!("not a PEM certificate: {e}")))?;
            b = b.add_root_certificate(cert);
        }
        Ok(Client {
            http: b.build().map_err(|e| ClientError::Connect(e.to_string()))?,
            base: base.trim_end_matches('/').to_string(),
            auth: format!("Bearer {key}"),
        })
    }

    fn get(&self, path: &str) -> RequestBuilder {
        self.http
            .get(format!("{}{path}", self.base))
            .header("Authorization", &self.auth)
    }

    fn send(&self, req: RequestBuilder) -> Result<Response, ClientError> {
        let r = req
            .send()
            .map_err(|e| ClientError::Connect(format!("{}: {}", self.base, chain(&e))))?;
        if r.status().is_success() {
            return Ok(r);
        }
        let status = r.status().as_u16();
        let text = r.text().unwrap_or_default();
        let message = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_string))
            .unwrap_or_else(|| text.trim().to_string());
        Err(ClientError::Refused { status, message })
    }

    /// `POST /v1/jobs`: the new job's id.
    pub fn submit(&self, body: &serde_json::Value) -> Result<String, ClientError> {
        let req = self
            .http
            .post(format!("{}/v1/jobs", self.base))
            .header("Authorization", &self.auth)
            .json(body);
        let v: serde_json::Value = self
            .send(req)?
            .json()
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        v["id"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| ClientError::Protocol(format!("no job id in {v}")))
    }

    /// Follow the job's events until it ends, calling `progress` with
    /// every status; the final status of a job that is done, an error for
    /// one that failed or was cancelled, or that has not ended within
    /// `timeout`.
    pub fn wait(
        &self,
        id: &str,
        timeout: Duration,
        mut progress: impl FnMut(&serde_json::Value),
    ) -> Result<serde_json::Value, ClientError> {
        let start = Instant::now();
        let mut cut: Option<Instant> = None;
        loop {
            let last = match self.send(self.get(&format!("/v1/jobs/{id}/events"))) {
                Ok(r) => {
                    cut = None;
                    follow(r, start, timeout, &mut progress)
                }
                Err(e @ ClientError::Refused { .. }) => return Err(e),
                Err(e) => {
                    // The server is away (restarting?): try again a while.
                    if cut.get_or_insert_with(Instant::now).elapsed() > RECONNECT {
                        return Err(e);
                    }
                    None
                }
            };
            if let Some(v) = last {
                return ended(id, v);
            }
            if start.elapsed() > timeout {
                return Err(ClientError::Timeout {
                    id: id.to_string(),
                    secs: timeout.as_secs(),
                });
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// `GET /v1/jobs/{id}/result` saved to `path` (a temporary file next
    /// to it, renamed into place); the number of bytes.
    pub fn save_result(&self, id: &str, path: &Path) -> Result<u64, ClientError> {
        let mut r = self.send(self.get(&format!("/v1/jobs/{id}/result")))?;
        let tmp = path.with_extension("partial");
        let io = |e: std::io::Error| ClientError::Io(format!("writing {}: {e}", path.display()));
        let written = (|| {
            // Written in 1 MiB pieces (the body is read straight into the
            // buffer): a 100 MB result is 100 writes, not 12 800.
            let f = std::fs::File::create(&tmp).map_err(io)?;
            let mut w = std::io::BufWriter::with_capacity(1 << 20, f);
            let n = std::io::copy(&mut r, &mut w)
                .map_err(|e| ClientError::Io(format!("receiving the result: {}", chain(&e))))?;
            w.into_inner().map_err(|e| io(e.into_error()))?;
            std::fs::rename(&tmp, path).map_err(io)?;
            Ok(n)
        })();
        if written.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        written
    }
}

/// Read an event stream until a status that ended; `None` if the stream
/// was cut before (or the time ran out).
fn follow(
    r: Response,
    start: Instant,
    timeout: Duration,
    progress: &mut impl FnMut(&serde_json::Value),
) -> Option<serde_json::Value> {
    for line in BufReader::new(r).lines() {
        let line = line.ok()?;
        if let Some(data) = line.strip_prefix("data:") {
            let v: serde_json::Value = serde_json::from_str(data.trim()).ok()?;
            progress(&v);
            if !matches!(v["state"].as_str(), Some("queued" | "running")) {
                return Some(v);
            }
        }
        if start.elapsed() > timeout {
            return None;
        }
    }
    None
}

fn ended(id: &str, v: serde_json::Value) -> Result<serde_json::Value, ClientError> {
    match v["state"].as_str() {
        Some("done") => Ok(v),
        Some("failed") => Err(ClientError::Failed {
            id: id.to_string(),
            reason: v["error"]["reason"].as_str().unwrap_or("?").to_string(),
            message: v["error"]["message"]
                .as_str()
                .unwrap_or("")
                .lines()
                .next()
                .unwrap_or("")
                .to_string(),
        }),
        Some("cancelled") => Err(ClientError::Cancelled(id.to_string())),
        _ => Err(ClientError::Protocol(format!("job status {v}"))),
    }
}

/// An error with its causes, on one line (reqwest's own message alone says
/// "error sending request").
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(&format!(": {c}"));
        src = c.source();
    }
    s
}
