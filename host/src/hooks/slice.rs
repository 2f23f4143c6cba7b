//! Strided slices of a row-major tensor: resolving the WIT `slice` (Python
//! slice semantics, but out-of-range bounds are errors rather than clamped)
//! and walking the selected elements as runs along the innermost dimension.

use std::fmt;

/// One dimension of a slice as given by a plugin: Python semantics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct DimRange {
    pub start: i64,
    pub stop: Option<i64>,
    pub step: u64,
}

impl DimRange {
    /// The whole dimension.
    pub const ALL: DimRange = DimRange {
        start: 0,
        stop: None,
        step: 1,
    };

    /// Elements `[start, stop)`.
    pub fn range(start: i64, stop: i64) -> Self {
        DimRange {
            start,
            stop: Some(stop),
            step: 1,
        }
    }

    /// The single element `index` (negative counts from the end).
    pub fn index(index: i64) -> Self {
        let stop = if index == -1 { None } else { Some(index + 1) };
        DimRange {
            start: index,
            stop,
            step: 1,
        }
    }
}

/// A slice resolved against a concrete shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// Per dimension: first index, number of indices, step.
    pub dims: Vec<(usize, usize, usize)>,
    /// Row-major strides (in elements) of the full tensor.
    pub strides: Vec<usize>,
    /// Shape of the full tensor.
    pub shape: Vec<usize>,
}

/// Why a slice does not fit a shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SliceError(pub String);

impl fmt::Display for SliceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn normalize(i: i64, dim: usize, what: &str, d: usize) -> Result<usize, SliceError> {
    let n = dim as i64;
    let v = if i < 0 { i + n } else { i };
    if v < 0 || v > n {
        return Err(SliceError(format!(
            "{what} {i} is out of range for dimension {d} of size {dim}"
        )));
    }
    Ok(v as usize)
}

/// Resolve `ranges` against `shape`. Dimensions beyond `ranges` are whole.
pub fn resolve(shape: &[usize], ranges: &[DimRange]) -> Result<Resolved, SliceError> {
    if ranges.len() > shape.len() {
        return Err(SliceError(format!(
            "slice has {} dimensions but the tensor has {} (shape {:?})",
            ranges.len(),
            shape.len(),
            shape
        )));
    }
    let mut dims = Vec::with_capacity(shape.len());
    for (d, &size) in shape.iter().enumerate() {
        let r = ranges.get(d).copied().unwrap_or(DimRange::ALL);
        if r.step == 0 {
            return Err(SliceError(format!(
                "step of dimension {d} must be at least 1"
            )));
        }
        let start = normalize(r.start, size, "start", d)?;
        if start == size && size > 0 && r.stop != Some(r.start) {
            return Err(SliceError(format!(
                "start {} is out of range for dimension {d} of size {size}",
                r.start
            )));
        }
        let stop = match r.stop {
            None => size,
            Some(s) => normalize(s, size, "stop", d)?,
        };
        let step = usize::try_from(r.step)
            .map_err(|_| SliceError(format!("step {} of dimension {d} is too large", r.step)))?;
        let count = if stop > start {
            (stop - start).div_ceil(step)
        } else {
            0
        };
        dims.push((start, count, step));
    }
    Ok(Resolved {
        dims,
        strides: row_major_strides(shape),
        shape: shape.to_vec(),
    })
}

/// Row-major strides of `shape`, in elements.
pub fn row_major_strides(shape: &[usize]) -> Vec<usize> {
    let mut strides = vec![1usize; shape.len()];
    for d in (0..shape.len().saturating_sub(1)).rev() {
        strides[d] = strides[d + 1] * shape[d + 1];
    }
    strides
}

impl Resolved {
    /// Shape of the selection.
    pub fn shape(&self) -> Vec<usize> {
        self.dims.iter().map(|&(_, c, _)| c).collect()
    }

    /// Number of selected elements.
    pub fn numel(&self) -> usize {
        self.dims.iter().map(|&(_, c, _)| c).product()
    }

    /// Length of the innermost run (elements selected in the last dimension).
    pub fn row_len(&self) -> usize {
        self.dims.last().map(|&(_, c, _)| c).unwrap_or(1)
    }

    /// Whether the selection is one contiguous block; returns its start.
    pub fn contiguous_block(&self) -> Option<usize> {
        // Contiguous iff the dimensions after some k are whole (step 1), dim k
        // has step 1 (or selects at most one index) and every dimension before
        // k selects at most one index.
        let n = self.dims.len();
        let mut k = n;
        while k > 0 {
            let (s, c, st) = self.dims[k - 1];
            if s == 0 && st == 1 && c == self.shape[k - 1] {
                k -= 1;
            } else {
                break;
            }
        }
        if k > 0 {
            let (_, c, st) = self.dims[k - 1];
            if c > 1 && st != 1 {
                return None;
            }
            if self.dims[..k - 1].iter().any(|&(_, c, _)| c > 1) {
                return None;
            }
        }
        Some(
            self.dims
                .iter()
                .zip(&self.strides)
                .map(|(&(s, _, _), &st)| s * st)
                .sum(),
        )
    }

    /// Call `f(flat_offset, count, stride)` for every run of the selection
    /// along the innermost dimension, in row-major order. Returns early with
    /// the first error `f` returns.
    pub fn for_each_row<E>(
        &self,
        mut f: impl FnMut(usize, usize, usize) -> Result<(), E>,
    ) -> Result<(), E> {
        if self.numel() == 0 {
            return Ok(());
        }
        let n = self.dims.len();
        if n == 0 {
            return f(0, 1, 1);
        }
        let (last_start, last_count, last_step) = self.dims[n - 1];
        let inner_stride = self.strides[n - 1] * last_step;
        let mut idx = vec![0usize; n - 1];
        loop {
            let mut off = last_start * self.strides[n - 1];
            for d in 0..n - 1 {
                let (s, _, st) = self.dims[d];
                off += (s + idx[d] * st) * self.strides[d];
            }
            f(off, last_count, inner_stride)?;
            // advance the odometer over the outer dimensions
            let mut d = n - 1;
            loop {
                if d == 0 {
                    return Ok(());
                }
                d -= 1;
                idx[d] += 1;
                if idx[d] < self.dims[d].1 {
                    break;
                }
                idx[d] = 0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn elems(shape: &[usize], ranges: &[DimRange]) -> Vec<usize> {
        let r = resolve(shape, ranges).unwrap();
        let mut out = vec![];
        r.for_each_row::<()>(|off, n, st| {
            out.extend((0..n).map(|i| off + i * st));
            Ok(())
        })
        .unwrap();
        out
    }

    #[test]
    fn last_token_of_each_sequence() {
        // [batch 2, seq 3, hidden 2]
        let e = elems(&[2, 3, 2], &[DimRange::ALL, DimRange::index(-1)]);
        assert_eq!(e, vec![4, 5, 10, 11]);
    }

    #[test]
    fn one_head_of_hidden() {
        // [1, 2, 6] with 3 heads of size 2: head 1 is hidden[2..4]
        let e = elems(
            &[1, 2, 6],
            &[DimRange::ALL, DimRange::ALL, DimRange::range(2, 4)],
        );
        assert_eq!(e, vec![2, 3, 8, 9]);
    }

    #[test]
    fn strided_and_negative() {
        let e = elems(
            &[10],
            &[DimRange {
                start: -9,
                stop: Some(-1),
                step: 3,
            }],
        );
        assert_eq!(e, vec![1, 4, 7]);
    }

    #[test]
    fn out_of_range_is_an_error_not_a_clamp() {
        assert!(resolve(&[4], &[DimRange::range(0, 5)]).is_err());
        assert!(resolve(&[4], &[DimRange::index(4)]).is_err());
        assert!(resolve(&[4], &[DimRange::index(-5)]).is_err());
        assert!(
            resolve(
                &[4],
                &[DimRange {
                    start: 0,
                    stop: None,
                    step: 0
                }]
            )
            .is_err()
        );
        assert!(resolve(&[4], &[DimRange::ALL, DimRange::ALL]).is_err());
    }

    #[test]
    fn contiguity() {
        let shape = [2, 3, 4];
        let r = resolve(&shape, &[DimRange::index(1), DimRange::range(1, 3)]).unwrap();
        assert_eq!(r.contiguous_block(), Some(12 + 4));
        let r = resolve(&shape, &[]).unwrap();
        assert_eq!(r.contiguous_block(), Some(0));
        let r = resolve(&shape, &[DimRange::ALL, DimRange::index(0)]).unwrap();
        assert_eq!(r.contiguous_block(), None);
        let r = resolve(
            &shape,
            &[
                DimRange::index(1),
                DimRange::index(2),
                DimRange::range(1, 3),
            ],
        )
        .unwrap();
        assert_eq!(r.contiguous_block(), Some(12 + 8 + 1));
    }
}
