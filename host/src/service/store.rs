//! The service's state: tenants, API keys (hashes only) and jobs in an
//! embedded SQLite database (`rusqlite`, WAL, `state.db` under `--state`),
//! results next to it (`results/<id>.safetensors`, written atomically).
//! A job accepted with 202 is in the database before the answer is sent.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rusqlite::{Connection, OptionalExtension, params};

use super::ServiceError;
use super::quota::Quota;

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
    /// The request body (JSON; read by [`Store::queued`] only: a body
    /// holds uploaded components, and lives in its own table so that state
    /// changes never rewrite it).
    pub body: String,
    /// `{"reason": ..., "message": ...}` when failed.
    pub error: Option<String>,
    /// Runs so far (more than one: re-queued after an interruption).
    pub attempts: i64,
    /// Jobs in the batch that ran it (co-tenancy batching), once ended.
    pub batch: Option<i64>,
    /// Milliseconds since the epoch: accepted, (last) started, ended.
    pub created_ms: Option<i64>,
    pub started_ms: Option<i64>,
    pub finished_ms: Option<i64>,
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
    now_ms() / 1000
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
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
                 tenant TEXT NOT NULL, state TEXT NOT NULL,
                 error TEXT, created INTEGER NOT NULL, finished INTEGER,
                 attempts INTEGER NOT NULL DEFAULT 0, batch INTEGER,
                 created_ms INTEGER, started_ms INTEGER, finished_ms INTEGER);
             CREATE TABLE IF NOT EXISTS bodies (
                 id TEXT PRIMARY KEY, body TEXT NOT NULL);
             CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs (state, seq);
             CREATE INDEX IF NOT EXISTS jobs_by_tenant ON jobs (tenant, state);
             CREATE TABLE IF NOT EXISTS tenants (
                 name TEXT PRIMARY KEY, quota TEXT NOT NULL);",
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

    /// Set tenant `tenant`'s limits.
    pub fn set_quota(&self, tenant: &str, q: &Quota) -> Result<(), ServiceError> {
        let text = serde_json::to_string(q).map_err(|e| ServiceError::Store(e.to_string()))?;
        self.conn()
            .execute(
                "INSERT INTO tenants (name, quota) VALUES (?1, ?2)
                 ON CONFLICT(name) DO UPDATE SET quota = ?2",
                params![tenant, text],
            )
            .map_err(db)?;
        Ok(())
    }

    /// Tenant `tenant`'s own limits (none set: the server's apply).
    pub fn quota(&self, tenant: &str) -> Result<Quota, ServiceError> {
        let text: Option<String> = self
            .conn()
            .query_row(
                "SELECT quota FROM tenants WHERE name = ?1",
                params![tenant],
                |r| r.get(0),
            )
            .optional()
            .map_err(db)?;
        match text {
            None => Ok(Quota::default()),
            Some(t) => serde_json::from_str(&t)
                .map_err(|e| ServiceError::Store(format!("quota of {tenant}: {e}"))),
        }
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
        let mut c = self.conn();
        let tx = c.transaction().map_err(db)?;
        let n = tx
            .execute(
                "INSERT INTO jobs (id, tenant, state, created, created_ms)
                 SELECT ?1, ?2, 'queued', ?3, ?5
                 WHERE (SELECT COUNT(*) FROM jobs WHERE tenant = ?2
                        AND state IN ('queued', 'running')) < ?4",
                params![id, tenant, now(), max_active, now_ms()],
            )
            .map_err(db)?;
        if n == 1 {
            tx.execute(
                "INSERT INTO bodies (id, body) VALUES (?1, ?2)",
                params![id, body],
            )
            .map_err(db)?;
            tx.commit().map_err(db)?;
            return Ok(Ok(()));
        }
        let active = tx
            .query_row(
                "SELECT COUNT(*) FROM jobs WHERE tenant = ?1 AND state IN ('queued', 'running')",
                params![tenant],
                |r| r.get(0),
            )
            .map_err(db)?;
        Ok(Err(active))
    }

    /// Tenant `tenant`'s jobs queued or running.
    pub fn active(&self, tenant: &str) -> Result<i64, ServiceError> {
        self.conn()
            .query_row(
                "SELECT COUNT(*) FROM jobs WHERE tenant = ?1 AND state IN ('queued', 'running')",
                params![tenant],
                |r| r.get(0),
            )
            .map_err(db)
    }

    fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Job> {
        Ok(Job {
            id: r.get(0)?,
            tenant: r.get(1)?,
            state: State::parse(&r.get::<_, String>(2)?),
            body: r.get(3)?,
            error: r.get(4)?,
            attempts: r.get(5)?,
            batch: r.get(6)?,
            created_ms: r.get(7)?,
            started_ms: r.get(8)?,
            finished_ms: r.get(9)?,
        })
    }

    /// Tenant `tenant`'s job `id` (another tenant's is `None`).
    pub fn job(&self, tenant: &str, id: &str) -> Result<Option<Job>, ServiceError> {
        self.conn()
            .query_row(
                "SELECT id, tenant, state, '', error, attempts, batch, created_ms, started_ms, finished_ms
                 FROM jobs WHERE id = ?1 AND tenant = ?2",
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

    /// The oldest `limit` queued jobs, in order (not taken).
    pub fn queued(&self, limit: usize) -> Result<Vec<Job>, ServiceError> {
        let c = self.conn();
        let mut q = c
            .prepare(
                "SELECT jobs.id, tenant, state, body, error, attempts, batch, created_ms, started_ms, finished_ms
                 FROM jobs JOIN bodies ON bodies.id = jobs.id WHERE state = 'queued'
                 ORDER BY seq LIMIT ?1",
            )
            .map_err(db)?;
        let rows = q.query_map(params![limit as i64], Self::row).map_err(db)?;
        rows.collect::<Result<_, _>>().map_err(db)
    }

    /// Mark job `id` running if it is still queued (not cancelled
    /// meanwhile); whether it was.
    pub fn start(&self, id: &str) -> Result<bool, ServiceError> {
        Ok(self.start_all(&[id])?[0])
    }

    /// [`Self::start`] for several jobs, in one transaction.
    pub fn start_all(&self, ids: &[&str]) -> Result<Vec<bool>, ServiceError> {
        let mut c = self.conn();
        let tx = c.transaction().map_err(db)?;
        let mut started = Vec::new();
        for id in ids {
            let n = tx
                .execute(
                    "UPDATE jobs SET state = 'running', attempts = attempts + 1, started_ms = ?2
                     WHERE id = ?1 AND state = 'queued'",
                    params![id, now_ms()],
                )
                .map_err(db)?;
            started.push(n > 0);
        }
        tx.commit().map_err(db)?;
        Ok(started)
    }

    /// Move `id` to `state` (with `error` when failed), unless it was
    /// cancelled meanwhile; whether it moved.
    pub fn finish(
        &self,
        id: &str,
        state: State,
        error: Option<&str>,
        batch: i64,
    ) -> Result<bool, ServiceError> {
        Ok(self.finish_all(&[(id, state, error)], batch)?[0])
    }

    /// [`Self::finish`] for the jobs of one batch, in one transaction; their
    /// bodies (no longer needed) removed.
    pub fn finish_all(
        &self,
        ends: &[(&str, State, Option<&str>)],
        batch: i64,
    ) -> Result<Vec<bool>, ServiceError> {
        let mut c = self.conn();
        let tx = c.transaction().map_err(db)?;
        let mut moved = Vec::new();
        for (id, state, error) in ends {
            let n = tx
                .execute(
                    "UPDATE jobs SET state = ?2, error = ?3, finished = ?4, batch = ?5, finished_ms = ?6
                     WHERE id = ?1 AND state != 'cancelled'",
                    params![id, state.as_str(), error, now(), batch, now_ms()],
                )
                .map_err(db)?;
            tx.execute("DELETE FROM bodies WHERE id = ?1", params![id])
                .map_err(db)?;
            moved.push(n > 0);
        }
        tx.commit().map_err(db)?;
        Ok(moved)
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
        // A cancelled job's body is no longer needed (a running one was
        // read already).
        self.conn()
            .execute(
                "DELETE FROM bodies WHERE id = ?1 AND (SELECT state FROM jobs WHERE id = ?1) = 'cancelled'",
                params![id],
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
        // `attempts` counts the run that was interrupted: a job asking for
        // `retries` runs at most 1 + retries times.
        let requeued = c
            .execute(
                "UPDATE jobs SET state = 'queued' WHERE state = 'running'
                 AND attempts <= (SELECT COALESCE(json_extract(body, '$.retries'), 0)
                                  FROM bodies WHERE bodies.id = jobs.id)",
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
