//! The service's state: tenants, API keys (hashes only) and jobs in an
//! embedded SQLite database (`rusqlite`, WAL, `state.db` under `--state`),
//! results next to it (`results/<id>.safetensors`, written atomically).
//! A job accepted with 202 is in the database before the answer is sent.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rusqlite::{Connection, OptionalExtension, params};

use super::ServiceError;

/// A job's state, as the API reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Queued,
    Running,
    Done,
    Failed,
    Cancelled,
}

impl State {
    fn as_str(self) -> &'static str {
        match self {
            State::Queued => "queued",
            State::Running => "running",
            State::Done => "done",
            State::Failed => "failed",
            State::Cancelled => "cancelled",
        }
    }

    fn parse(s: &str) -> State {
        match s {
            "queued" => State::Queued,
            "running" => State::Running,
            "done" => State::Done,
            "cancelled" => State::Cancelled,
            _ => State::Failed,
        }
    }
}

/// A job as stored.
#[derive(Debug, Clone)]
pub struct Job {
    pub id: String,
    pub tenant: String,
    pub state: State,
    /// The request body (JSON).
    pub body: String,
    /// `{"reason": ..., "message": ...}` when failed.
    pub error: Option<String>,
}

/// A key as listed (never its secret).
#[derive(Debug, Clone, serde::Serialize)]
pub struct KeyListing {
    pub id: String,
    pub tenant: String,
    pub created: i64,
    pub revoked: bool,
}

pub struct Store {
    conn: Mutex<Connection>,
    dir: PathBuf,
}

fn db(e: rusqlite::Error) -> ServiceError {
    ServiceError::Store(e.to_string())
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

impl Store {
    /// Open (creating) the state folder and its database.
    pub fn open(dir: &Path) -> Result<Store, ServiceError> {
        std::fs::create_dir_all(dir.join("results"))
            .map_err(|e| ServiceError::Store(format!("{}: {e}", dir.display())))?;
        let conn = Connection::open(dir.join("state.db")).map_err(db)?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = FULL;
             CREATE TABLE IF NOT EXISTS keys (
                 id TEXT PRIMARY KEY, tenant TEXT NOT NULL, hash TEXT NOT NULL,
                 created INTEGER NOT NULL, revoked INTEGER NOT NULL DEFAULT 0);
             CREATE TABLE IF NOT EXISTS jobs (
                 seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT UNIQUE NOT NULL,
                 tenant TEXT NOT NULL, state TEXT NOT NULL, body TEXT NOT NULL,
                 error TEXT, created INTEGER NOT NULL, finished INTEGER);",
        )
        .map_err(db)?;
        Ok(Store {
            conn: Mutex::new(conn),
            dir: dir.to_path_buf(),
        })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn result_path(&self, id: &str) -> PathBuf {
        self.dir.join("results").join(format!("{id}.safetensors"))
    }

    pub fn add_key(&self, id: &str, tenant: &str, hash: &str) -> Result<(), ServiceError> {
        self.conn()
            .execute(
                "INSERT INTO keys (id, tenant, hash, created) VALUES (?1, ?2, ?3, ?4)",
                params![id, tenant, hash, now()],
            )
            .map_err(db)?;
        Ok(())
    }

    /// The tenant and hash of a live key.
    pub fn key(&self, id: &str) -> Result<Option<(String, String)>, ServiceError> {
        self.conn()
            .query_row(
                "SELECT tenant, hash FROM keys WHERE id = ?1 AND revoked = 0",
                params![id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(db)
    }

    pub fn keys(&self) -> Result<Vec<KeyListing>, ServiceError> {
        let c = self.conn();
        let mut q = c
            .prepare("SELECT id, tenant, created, revoked FROM keys ORDER BY created, id")
            .map_err(db)?;
        let rows = q
            .query_map([], |r| {
                Ok(KeyListing {
                    id: r.get(0)?,
                    tenant: r.get(1)?,
                    created: r.get(2)?,
                    revoked: r.get::<_, i64>(3)? != 0,
                })
            })
            .map_err(db)?;
        rows.collect::<Result<_, _>>().map_err(db)
    }

    /// Revoke key `id`; whether it existed.
    pub fn revoke(&self, id: &str) -> Result<bool, ServiceError> {
        let n = self
            .conn()
            .execute("UPDATE keys SET revoked = 1 WHERE id = ?1", params![id])
            .map_err(db)?;
        Ok(n > 0)
    }

    /// Queue a job unless the tenant already has `max_active` queued or
    /// running (checked and inserted in one statement, so concurrent
    /// requests cannot pass the quota together); `Err(n)` with their count.
    pub fn add_job(
        &self,
        id: &str,
        tenant: &str,
        body: &str,
        max_active: i64,
    ) -> Result<Result<(), i64>, ServiceError> {
        let c = self.conn();
        let n = c
            .execute(
                "INSERT INTO jobs (id, tenant, state, body, created)
                 SELECT ?1, ?2, 'queued', ?3, ?4
                 WHERE (SELECT COUNT(*) FROM jobs WHERE tenant = ?2
                        AND state IN ('queued', 'running')) < ?5",
                params![id, tenant, body, now(), max_active],
            )
            .map_err(db)?;
        if n == 1 {
            return Ok(Ok(()));
        }
        let active = c
            .query_row(
                "SELECT COUNT(*) FROM jobs WHERE tenant = ?1 AND state IN ('queued', 'running')",
                params![tenant],
                |r| r.get(0),
            )
            .map_err(db)?;
        Ok(Err(active))
    }

    fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Job> {
        Ok(Job {
            id: r.get(0)?,
            tenant: r.get(1)?,
            state: State::parse(&r.get::<_, String>(2)?),
            body: r.get(3)?,
            error: r.get(4)?,
        })
    }

    /// Tenant `tenant`'s job `id` (another tenant's is `None`).
    pub fn job(&self, tenant: &str, id: &str) -> Result<Option<Job>, ServiceError> {
        self.conn()
            .query_row(
                "SELECT id, tenant, state, body, error FROM jobs WHERE id = ?1 AND tenant = ?2",
                params![id, tenant],
                Self::row,
            )
            .optional()
            .map_err(db)
    }

    /// Jobs queued before `id` (its position in the queue, from 0).
    pub fn position(&self, id: &str) -> Result<i64, ServiceError> {
        self.conn()
            .query_row(
                "SELECT COUNT(*) FROM jobs WHERE state = 'queued'
                 AND seq < (SELECT seq FROM jobs WHERE id = ?1)",
                params![id],
                |r| r.get(0),
            )
            .map_err(db)
    }

    /// Take the oldest queued job, marking it running.
    pub fn next(&self) -> Result<Option<Job>, ServiceError> {
        let c = self.conn();
        let job = c
            .query_row(
                "SELECT id, tenant, state, body, error FROM jobs WHERE state = 'queued' ORDER BY seq LIMIT 1",
                [],
                Self::row,
            )
            .optional()
            .map_err(db)?;
        if let Some(j) = &job {
            c.execute(
                "UPDATE jobs SET state = 'running' WHERE id = ?1",
                params![j.id],
            )
            .map_err(db)?;
        }
        Ok(job)
    }

    /// Move `id` to `state` (with `error` when failed), unless it was
    /// cancelled meanwhile; whether it moved.
    pub fn finish(
        &self,
        id: &str,
        state: State,
        error: Option<&str>,
    ) -> Result<bool, ServiceError> {
        let n = self
            .conn()
            .execute(
                "UPDATE jobs SET state = ?2, error = ?3, finished = ?4 WHERE id = ?1 AND state != 'cancelled'",
                params![id, state.as_str(), error, now()],
            )
            .map_err(db)?;
        Ok(n > 0)
    }

    /// Cancel tenant `tenant`'s job `id` if it has not ended; the job after.
    pub fn cancel(&self, tenant: &str, id: &str) -> Result<Option<Job>, ServiceError> {
        self.conn()
            .execute(
                "UPDATE jobs SET state = 'cancelled', finished = ?3
                 WHERE id = ?1 AND tenant = ?2 AND state IN ('queued', 'running')",
                params![id, tenant, now()],
            )
            .map_err(db)?;
        self.job(tenant, id)
    }

    /// After a restart: jobs that were running when the server died fail
    /// with reason `interrupted` (re-queued when they asked for retries).
    pub fn recover(&self) -> Result<usize, ServiceError> {
        // A result being written when the server died: never listed, gone.
        if let Ok(entries) = std::fs::read_dir(self.dir.join("results")) {
            for e in entries.flatten() {
                if e.path().extension().is_some_and(|x| x == "partial") {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        let c = self.conn();
        let requeued = c
            .execute(
                "UPDATE jobs SET state = 'queued' WHERE state = 'running'
                 AND json_extract(body, '$.retries') > 0",
                [],
            )
            .map_err(db)?;
        let failed = c
            .execute(
                "UPDATE jobs SET state = 'failed', finished = ?1,
                 error = '{\"reason\":\"interrupted\",\"message\":\"the server stopped while the job ran\"}'
                 WHERE state = 'running'",
                params![now()],
            )
            .map_err(db)?;
        Ok(requeued + failed)
    }
}
