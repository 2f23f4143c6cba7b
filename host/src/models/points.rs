//! Hook-point names: every point has a canonical name (the Hugging Face module
//! path, or `<module path>.hook_*` for points inside a module's forward) and
//! usually a TransformerLens alias, meaning what it means in TransformerLens
//! 3.x. Users may use either, or a glob pattern over either
//! (`blocks.*.hook_resid_post`).
//!
//! Each architecture declares its points once, in tables made with
//! [`hook_points!`]: name, alias, shape and tensor-parallel layout. The
//! names the forward fires, [`PointInfo`]s and the TP splits the engine
//! gathers with all come from them.

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
    /// TransformerLens alias (empty if none).
    pub alias: String,
    /// Further aliases (e.g. `logits` next to `unembed.hook_out`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
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
            aliases: Vec::new(),
            tp_split: None,
        }
    }

    /// Every alias of the point.
    pub fn all_aliases(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.alias.as_str())
            .filter(|a| !a.is_empty())
            .chain(self.aliases.iter().map(String::as_str))
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

/// A dimension of a hook point's shape, resolved by [`Dims`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dim {
    /// Batch.
    B,
    /// Sequence positions.
    S,
    /// Model width.
    D,
    /// Three times the width (fused q | k | v).
    D3,
    /// Attention heads, key/value heads, head width.
    H,
    Hkv,
    Dh,
    /// Query and key/value projection widths (`H·Dh`, `Hkv·Dh`).
    HDh,
    HkvDh,
    /// MLP hidden width.
    I,
    /// Vocabulary.
    V,
    One,
}

/// The sizes [`Dim`]s stand for.
#[derive(Debug, Clone, Copy, Default)]
pub struct Dims {
    pub batch: i64,
    pub seq: i64,
    pub width: i64,
    pub heads: i64,
    pub kv_heads: i64,
    pub head_dim: i64,
    pub inner: i64,
    pub vocab: i64,
}

impl Dims {
    pub fn get(&self, d: Dim) -> i64 {
        match d {
            Dim::B => self.batch,
            Dim::S => self.seq,
            Dim::D => self.width,
            Dim::D3 => 3 * self.width,
            Dim::H => self.heads,
            Dim::Hkv => self.kv_heads,
            Dim::Dh => self.head_dim,
            Dim::HDh => self.heads * self.head_dim,
            Dim::HkvDh => self.kv_heads * self.head_dim,
            Dim::I => self.inner,
            Dim::V => self.vocab,
            Dim::One => 1,
        }
    }
}

/// `prefix.name` (either may be empty).
pub fn join(prefix: &str, name: &str) -> String {
    match (prefix.is_empty(), name.is_empty()) {
        (_, true) => prefix.to_string(),
        (true, false) => name.to_string(),
        (false, false) => format!("{prefix}.{name}"),
    }
}

/// One row of a hook-point table.
pub struct PointSpec {
    /// Canonical name under the table's prefix.
    pub name: &'static str,
    /// Aliases under the table's TransformerLens prefix, `|`-separated
    /// (empty: none).
    pub alias: &'static str,
    pub shape: &'static [Dim],
    pub tp_split: Option<TpSplit>,
}

impl PointSpec {
    /// The point under `prefix` (canonical) and `tl` (aliases).
    pub fn info(&self, prefix: &str, tl: &str, dims: &Dims) -> PointInfo {
        let mut aliases = self
            .alias
            .split('|')
            .filter(|a| !a.is_empty())
            .map(|a| join(tl, a));
        PointInfo {
            name: join(prefix, self.name),
            shape: self.shape.iter().map(|&d| dims.get(d)).collect(),
            alias: aliases.next().unwrap_or_default(),
            aliases: aliases.collect(),
            tp_split: self.tp_split,
        }
    }
}

/// Declare a table of hook points: a struct with one canonical name per
/// point (`Names::new(prefix)`), and `Names::TABLE`, the rows in forward
/// order. Each row: `field: "name", "alias", [dims]` and optionally
/// `split(dim, groups)` for a point split over the TP group.
macro_rules! hook_points {
    ($(#[$m:meta])* $vis:vis struct $ty:ident {
        $( $field:ident : $name:literal, $alias:literal, [$($d:ident),*] $(, split($sd:literal, $sg:literal))? ; )*
    }) => {
        $(#[$m])*
        $vis struct $ty { $( pub $field: String, )* }

        impl $ty {
            /// The canonical names under `prefix`.
            pub fn new(prefix: &str) -> Self {
                $ty { $( $field: $crate::models::points::join(prefix, $name), )* }
            }

            /// Every row, in forward order.
            pub const TABLE: &'static [$crate::models::points::PointSpec] = &[ $(
                $crate::models::points::PointSpec {
                    name: $name,
                    alias: $alias,
                    shape: &[$($crate::models::points::Dim::$d),*],
                    tp_split: hook_points!(@split $($sd, $sg)?),
                },
            )* ];

            /// The points under `prefix` (canonical) and `tl` (aliases).
            pub fn infos(prefix: &str, tl: &str, dims: &$crate::models::points::Dims)
                -> Vec<$crate::models::points::PointInfo> {
                Self::TABLE.iter().map(|p| p.info(prefix, tl, dims)).collect()
            }
        }
    };
    (@split) => { None };
    (@split $d:literal, $g:literal) => {
        Some($crate::models::points::TpSplit { dim: $d, groups: $g })
    };
}
pub(crate) use hook_points;

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
            || p.all_aliases().any(|a| self.glob.is_match(dotted(a)))
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
