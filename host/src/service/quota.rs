//! A tenant's limits (`flexmodel serve keys add --quota NAME=VALUE`), under
//! the server's own (`serve --max-...`): the lower of the two applies. Each
//! has a fixed name, the one a 429 or a failed job's reason names.

use serde::{Deserialize, Serialize};

use super::ServiceError;

/// Limits of one tenant (`None`: the server's).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Quota {
    /// Jobs queued or running at once (`429 quota active_jobs`).
    pub active_jobs: Option<i64>,
    /// Fuel of one hook call (a plugin running out fails its job).
    pub fuel_per_call: Option<u64>,
    /// Linear memory of one plugin instance, bytes.
    pub memory_bytes: Option<u64>,
    /// Bytes of a job's result (logits and outputs).
    pub output_bytes: Option<u64>,
    /// Wall time of a job from its start, milliseconds (checked at every
    /// call of its hooks).
    pub wall_ms: Option<u64>,
}

pub const NAMES: &str = "active_jobs, fuel_per_call, memory_bytes, output_bytes, wall_ms";

fn lower<T: Ord>(a: Option<T>, b: Option<T>) -> Option<T> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

impl Quota {
    /// `NAME=VALUE` settings (integers; `k`, `M`, `G` as powers of 1024).
    pub fn parse(settings: &[String]) -> Result<Quota, ServiceError> {
        let mut q = Quota::default();
        for s in settings {
            let (name, value) = s.split_once('=').ok_or_else(|| {
                ServiceError::Input(format!("quota {s:?}: expected NAME=VALUE ({NAMES})"))
            })?;
            let v = number(value.trim()).ok_or_else(|| {
                ServiceError::Input(format!("quota {name}: {value:?} is not a whole number"))
            })?;
            match name.trim() {
                "active_jobs" => q.active_jobs = Some(v.min(i64::MAX as u64) as i64),
                "fuel_per_call" => q.fuel_per_call = Some(v),
                "memory_bytes" => q.memory_bytes = Some(v),
                "output_bytes" => q.output_bytes = Some(v),
                "wall_ms" => q.wall_ms = Some(v),
                other => {
                    return Err(ServiceError::Input(format!(
                        "unknown quota {other:?} (quotas: {NAMES})"
                    )));
                }
            }
        }
        Ok(q)
    }

    /// What applies: the lower of this tenant's and the server's.
    pub fn under(&self, server: &Quota) -> Quota {
        Quota {
            active_jobs: lower(self.active_jobs, server.active_jobs),
            fuel_per_call: lower(self.fuel_per_call, server.fuel_per_call),
            memory_bytes: lower(self.memory_bytes, server.memory_bytes),
            output_bytes: lower(self.output_bytes, server.output_bytes),
            wall_ms: lower(self.wall_ms, server.wall_ms),
        }
    }
}

fn number(s: &str) -> Option<u64> {
    let (digits, scale) = match s.chars().last()? {
        'k' | 'K' => (&s[..s.len() - 1], 1u64 << 10),
        'M' => (&s[..s.len() - 1], 1 << 20),
        'G' => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    digits.parse::<u64>().ok()?.checked_mul(scale)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_parse_and_the_lower_limit_applies() {
        let q = Quota::parse(&["active_jobs=2".into(), "output_bytes=1M".into()]).unwrap();
        assert_eq!(q.active_jobs, Some(2));
        assert_eq!(q.output_bytes, Some(1 << 20));
        let server = Quota {
            active_jobs: Some(16),
            wall_ms: Some(1000),
            ..Quota::default()
        };
        let u = q.under(&server);
        assert_eq!(
            (u.active_jobs, u.wall_ms, u.fuel_per_call),
            (Some(2), Some(1000), None)
        );
        assert!(Quota::parse(&["cpu=1".into()]).is_err());
        assert!(Quota::parse(&["wall_ms=soon".into()]).is_err());
    }
}
