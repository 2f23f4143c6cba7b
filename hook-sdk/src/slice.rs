//! Slices of an activation: [`Slice`] in code, [`SliceSpec`] as written in a
//! JSON configuration.

use crate::{Error, Result, wit};

/// One dimension of a [`Slice`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Dim {
    /// First index; negative counts from the end.
    pub start: i64,
    /// One past the last index (`None`: to the end); negative counts from the end.
    pub stop: Option<i64>,
    /// Stride, at least 1.
    pub step: u64,
}

impl Dim {
    /// The whole dimension.
    pub const ALL: Dim = Dim {
        start: 0,
        stop: None,
        step: 1,
    };
    /// A single index (negative counts from the end).
    pub fn index(i: i64) -> Dim {
        Dim {
            start: i,
            stop: if i == -1 { None } else { Some(i + 1) },
            step: 1,
        }
    }
    /// Indices `[start, stop)`.
    pub fn range(start: i64, stop: i64) -> Dim {
        Dim {
            start,
            stop: Some(stop),
            step: 1,
        }
    }
    /// Indices `start, start+step, ...` below `stop`.
    pub fn strided(start: i64, stop: Option<i64>, step: u64) -> Dim {
        Dim { start, stop, step }
    }
}

/// A strided selection of a tensor: one [`Dim`] per leading dimension, the
/// remaining dimensions whole. Python slice semantics, but out-of-range
/// bounds are errors rather than clamped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Slice(pub Vec<Dim>);

impl Slice {
    /// The whole tensor.
    pub fn all() -> Slice {
        Slice(Vec::new())
    }
    /// From explicit dims.
    pub fn new(dims: impl Into<Vec<Dim>>) -> Slice {
        Slice(dims.into())
    }
    /// Append a dimension.
    pub fn then(mut self, d: Dim) -> Slice {
        self.0.push(d);
        self
    }
    /// Token `pos` of every sequence of a `[batch, seq, ...]` activation.
    pub fn token(pos: i64) -> Slice {
        Slice(vec![Dim::ALL, Dim::index(pos)])
    }
    /// The last token of every sequence of a `[batch, seq, ...]` activation.
    pub fn last_token() -> Slice {
        Slice::token(-1)
    }
    /// Columns `[start, stop)` of the last dimension of a tensor of rank `rank`.
    pub fn last_dim_range(rank: usize, start: i64, stop: i64) -> Slice {
        let mut d = vec![Dim::ALL; rank.saturating_sub(1)];
        d.push(Dim::range(start, stop));
        Slice(d)
    }
    pub(crate) fn wit(&self) -> Vec<wit::DimRange> {
        self.0
            .iter()
            .map(|d| wit::DimRange {
                start: d.start,
                stop: d.stop,
                step: d.step,
            })
            .collect()
    }
}

/// A slice as written in a JSON configuration: a list with one entry per
/// leading dimension, each `null` (whole dimension), an integer (one index,
/// negative from the end), `[start, stop]` or `[start, stop, step]` (`stop`
/// may be `null`). `[null, -1]` is the last token of every sequence.
#[derive(Debug, Clone, Default, PartialEq, serde::Deserialize)]
#[serde(transparent)]
pub struct SliceSpec(pub Vec<DimSpec>);

/// One dimension of a [`SliceSpec`].
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(untagged)]
pub enum DimSpec {
    All(()),
    Index(i64),
    Range(Vec<Option<i64>>),
}

impl SliceSpec {
    /// Validate and convert to a [`Slice`].
    pub fn to_slice(&self) -> Result<Slice> {
        let mut dims = Vec::with_capacity(self.0.len());
        for d in &self.0 {
            dims.push(match d {
                DimSpec::All(()) => Dim::ALL,
                DimSpec::Index(i) => Dim::index(*i),
                DimSpec::Range(v) => match v.as_slice() {
                    [s, e] => Dim::strided(s.unwrap_or(0), *e, 1),
                    [s, e, st] => {
                        let step = st.unwrap_or(1);
                        if step < 1 {
                            return Err(Error::config(format!("slice step {step} must be >= 1")));
                        }
                        Dim::strided(s.unwrap_or(0), *e, step as u64)
                    }
                    _ => {
                        return Err(Error::config(format!(
                            "slice range {v:?} must be [start, stop] or [start, stop, step]"
                        )));
                    }
                },
            });
        }
        Ok(Slice(dims))
    }
}
