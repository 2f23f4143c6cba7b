//! What a job asks for (the body of `POST /v1/jobs`; field names fixed):
//! `token_ids` (a list of id lists) or `prompts` (a list of strings),
//! optional `hooks: [{"plugin": REF, "digest": "sha256:…", "at": PATTERN,
//! "config": {…}}]`, optional `max_new_tokens` (greedy generation, stopping
//! at the model's EOS), optional `retries` (re-queued after an interrupted
//! run), optional `return_logits` (default true), `seed` (the hooks'
//! random streams), `ignore_eos` (generation), `stop_at` (a forward
//! stopped after a hook point), `padding` (`"right"` or `"left"`). A hook
//! names a package
//! (`plugin`) or uploads its component (`component`, base64). Checked
//! whole before the job is accepted.

use serde::Deserialize;

use super::ServiceError;
use crate::engine::Padding;
use crate::package::reference::{PackageRef, valid_digest};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HookRequest {
    /// `namespace:name@version` (a package the server's policy allows).
    pub plugin: Option<String>,
    /// Or the component itself, base64 (under the same trust policy: a
    /// signed one unless the policy allows unsigned).
    pub component: Option<String>,
    /// The component's digest it must have.
    pub digest: Option<String>,
    pub at: String,
    #[serde(default)]
    pub config: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobRequest {
    pub token_ids: Option<Vec<Vec<i64>>>,
    pub prompts: Option<Vec<String>>,
    #[serde(default)]
    pub hooks: Vec<HookRequest>,
    pub max_new_tokens: Option<usize>,
    #[serde(default)]
    pub retries: u32,
    /// Put the logits in the result (default true; false: outputs only).
    #[serde(default = "yes")]
    pub return_logits: bool,
    /// Seed of the job's hooks' random streams (default: the server's);
    /// a job's streams depend on it and on the job alone.
    pub seed: Option<u64>,
    /// Generation goes on past the model's EOS tokens.
    #[serde(default)]
    pub ignore_eos: bool,
    /// Stop the forward after this hook point (as `run --stop-at`): only
    /// the hooks up to there run, no logits.
    pub stop_at: Option<String>,
    /// Where shorter prompts are padded (`"right"`, the default, or
    /// `"left"`), as `run --padding`: what the hooks see. Jobs share a
    /// batch only with jobs padded the same way.
    #[serde(default)]
    pub padding: Padding,
}

fn yes() -> bool {
    true
}

impl HookRequest {
    /// How the hook is named in messages.
    pub fn label(&self) -> String {
        match (&self.plugin, &self.digest) {
            (Some(p), _) => p.clone(),
            (None, Some(d)) => format!("uploaded component {d}"),
            (None, None) => "uploaded component".into(),
        }
    }

    /// The uploaded component's bytes.
    pub fn component_bytes(&self) -> Result<Option<Vec<u8>>, ServiceError> {
        use base64::Engine;
        self.component
            .as_deref()
            .map(|c| {
                base64::engine::general_purpose::STANDARD
                    .decode(c.trim())
                    .map_err(|e| bad(format!("hooks: component is not base64: {e}")))
            })
            .transpose()
    }
}

fn bad(m: impl Into<String>) -> ServiceError {
    ServiceError::Input(m.into())
}

/// The largest job accepted: prompts per job, tokens per prompt, hooks.
pub const MAX_PROMPTS: usize = 256;
pub const MAX_TOKENS: usize = 8192;
pub const MAX_HOOKS: usize = 64;

impl JobRequest {
    /// Whether the job can share a padded batch with others (a whole
    /// forward; generation and a forward stopping early run alone).
    pub fn batchable(&self) -> bool {
        self.max_new_tokens.is_none() && self.stop_at.is_none()
    }

    /// A submitted body, checked whole (an uploaded component's base64
    /// decoded too).
    pub fn parse(body: &str) -> Result<JobRequest, ServiceError> {
        Self::check(body, true)
    }

    /// A stored body, accepted by [`Self::parse`] when it was submitted:
    /// checked again but for decoding its components (the worker finds
    /// them among the accepted uploads by their text's hash).
    pub fn read(body: &str) -> Result<JobRequest, ServiceError> {
        Self::check(body, false)
    }

    fn check(body: &str, decode: bool) -> Result<JobRequest, ServiceError> {
        let j: JobRequest =
            serde_json::from_str(body).map_err(|e| bad(format!("invalid job: {e}")))?;
        let n = match (&j.token_ids, &j.prompts) {
            (Some(t), None) => {
                if t.iter().any(|r| r.is_empty() || r.len() > MAX_TOKENS) {
                    return Err(bad(format!(
                        "every token_ids row must hold 1..={MAX_TOKENS} ids"
                    )));
                }
                t.len()
            }
            (None, Some(p)) => {
                if p.iter().any(String::is_empty) {
                    return Err(bad("prompts must not be empty strings"));
                }
                p.len()
            }
            _ => return Err(bad("give exactly one of token_ids or prompts")),
        };
        if n == 0 || n > MAX_PROMPTS {
            return Err(bad(format!("a job holds 1..={MAX_PROMPTS} prompts")));
        }
        if j.hooks.len() > MAX_HOOKS {
            return Err(bad(format!("at most {MAX_HOOKS} hooks per job")));
        }
        for h in &j.hooks {
            match (&h.plugin, &h.component) {
                (Some(p), None) => {
                    PackageRef::parse(p).map_err(|e| bad(format!("hooks: {e}")))?;
                }
                (None, Some(_)) => {
                    if decode {
                        h.component_bytes()?;
                    }
                }
                _ => return Err(bad("hooks: give exactly one of plugin or component")),
            }
            if let Some(d) = &h.digest
                && !valid_digest(d)
            {
                return Err(bad(format!(
                    "hooks: digest {d:?} is not sha256:<64 hex digits>"
                )));
            }
            if h.at.is_empty() {
                return Err(bad("hooks: empty `at` pattern"));
            }
        }
        if j.stop_at.is_some() && j.max_new_tokens.is_some() {
            return Err(bad("stop_at and max_new_tokens do not go together"));
        }
        if j.max_new_tokens.is_some_and(|m| m == 0 || m > MAX_TOKENS) {
            return Err(bad(format!("max_new_tokens must be 1..={MAX_TOKENS}")));
        }
        Ok(j)
    }
}
