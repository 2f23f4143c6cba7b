//! Hook-point names: every point has a canonical name (the Hugging Face module
//! path, or `<module path>.hook_*` for points inside a module's forward) and
//! usually a TransformerLens-style alias. Users may use either, or a glob
//! pattern over either (`blocks.*.hook_resid_post`).

use globset::{Glob, GlobMatcher};

/// How a hook point's activation is laid out over a tensor-parallel group
/// when it is not replicated: dimension `dim` of the logical tensor is made of
/// `groups` equal sections (e.g. GPT-2's fused q | k | v), and each section
/// is split into contiguous, balanced parts, one per rank in rank order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct TpSplit {
    pub dim: i64,
    pub groups: i64,
}

/// A hook point of a model and the shape of its activation.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PointInfo {
    /// Canonical name.
    pub name: String,
    /// Shape (of the logical, unsharded tensor) for the batch and sequence
    /// length asked for.
    pub shape: Vec<i64>,
    /// TransformerLens-style alias (empty if none).
    pub alias: String,
    /// Layout under tensor parallelism; `None`: every TP rank holds the whole
    /// activation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tp_split: Option<TpSplit>,
}

impl PointInfo {
    pub fn new(name: &str, shape: Vec<i64>, alias: &str) -> Self {
        PointInfo {
            name: name.into(),
            shape,
            alias: alias.into(),
            tp_split: None,
        }
    }

    /// Mark the point as split along `dim` over the TP group.
    pub fn split(self, dim: i64) -> Self {
        self.split_groups(dim, 1)
    }

    /// Mark the point as `groups` sections along `dim`, each split over the
    /// TP group.
    pub fn split_groups(mut self, dim: i64, groups: i64) -> Self {
        self.tp_split = Some(TpSplit { dim, groups });
        self
    }
}

/// Why a pattern selects nothing or is malformed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    #[error("hook-point pattern {pattern:?} is not a valid glob: {message}")]
    Invalid { pattern: String, message: String },
    #[error(
        "hook-point pattern {pattern:?} matches no hook point of this model (try `flexmodel inspect`)"
    )]
    NoMatch { pattern: String },
}

/// A compiled hook-point pattern, matched against canonical names and aliases.
#[derive(Debug, Clone)]
pub struct PointPattern {
    text: String,
    glob: GlobMatcher,
}

impl PointPattern {
    pub fn new(pattern: &str) -> Result<Self, PatternError> {
        // `*` must not cross dots: `blocks.*.hook_resid_post` picks one level.
        // Dots separate levels: match with `/` as the separator.
        let glob = globset::GlobBuilder::new(&pattern.replace('.', "/"))
            .literal_separator(true)
            .build()
            .map(|g: Glob| g.compile_matcher())
            .map_err(|e| PatternError::Invalid {
                pattern: pattern.into(),
                message: e.to_string(),
            })?;
        Ok(PointPattern {
            text: pattern.into(),
            glob,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    pub fn matches(&self, p: &PointInfo) -> bool {
        let dotted = |s: &str| s.replace('.', "/");
        self.glob.is_match(dotted(&p.name))
            || (!p.alias.is_empty() && self.glob.is_match(dotted(&p.alias)))
    }

    /// Canonical names of the points this pattern selects, in forward order.
    pub fn select(&self, points: &[PointInfo]) -> Result<Vec<String>, PatternError> {
        let v: Vec<String> = points
            .iter()
            .filter(|p| self.matches(p))
            .map(|p| p.name.clone())
            .collect();
        if v.is_empty() {
            return Err(PatternError::NoMatch {
                pattern: self.text.clone(),
            });
        }
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pts() -> Vec<PointInfo> {
        vec![
            PointInfo::new("transformer.h.0", vec![], "blocks.0.hook_resid_post"),
            PointInfo::new("transformer.h.0.mlp", vec![], "blocks.0.hook_mlp_out"),
            PointInfo::new("transformer.h.1", vec![], "blocks.1.hook_resid_post"),
            PointInfo::new("transformer.h.10", vec![], "blocks.10.hook_resid_post"),
        ]
    }

    #[test]
    fn glob_over_aliases_and_names() {
        let p = PointPattern::new("blocks.*.hook_resid_post").unwrap();
        assert_eq!(
            p.select(&pts()).unwrap(),
            vec!["transformer.h.0", "transformer.h.1", "transformer.h.10"]
        );
        let p = PointPattern::new("transformer.h.0.mlp").unwrap();
        assert_eq!(p.select(&pts()).unwrap(), vec!["transformer.h.0.mlp"]);
        let p = PointPattern::new("transformer.h.*").unwrap();
        assert_eq!(
            p.select(&pts()).unwrap().len(),
            3,
            "`*` does not cross dots"
        );
        assert!(matches!(
            PointPattern::new("nope.*").unwrap().select(&pts()),
            Err(PatternError::NoMatch { .. })
        ));
        assert!(PointPattern::new("a[").is_err());
    }
}
