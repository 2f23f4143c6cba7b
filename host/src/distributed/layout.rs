//! From a rank's shard of an activation to the logical tensor and back,
//! following the hook point's [`TpSplit`]: gather every rank's part and
//! assemble it, or cut this rank's part out of an edited logical tensor.

use tch::{Kind, Tensor};

use super::comm::Communicator;
use super::error::CommError;
use crate::models::TpSplit;
use crate::models::shard::balanced;

fn norm_dim(t: &Tensor, dim: i64) -> i64 {
    if dim < 0 { dim + t.dim() as i64 } else { dim }
}

/// The logical tensor made of every rank's part (`parts` in rank order).
pub fn assemble(parts: &[Tensor], split: TpSplit) -> Tensor {
    let dim = norm_dim(&parts[0], split.dim);
    if split.groups <= 1 {
        return Tensor::cat(parts, dim);
    }
    let chunks: Vec<Vec<Tensor>> = parts.iter().map(|p| p.chunk(split.groups, dim)).collect();
    let mut ordered = Vec::with_capacity(parts.len() * split.groups as usize);
    for g in 0..split.groups as usize {
        for c in &chunks {
            ordered.push(c[g].shallow_clone());
        }
    }
    Tensor::cat(&ordered, dim)
}

/// Rank `rank`'s part (of `size`) of the logical tensor.
pub fn local_part(logical: &Tensor, split: TpSplit, rank: usize, size: usize) -> Tensor {
    let dim = norm_dim(logical, split.dim);
    let groups = split.groups.max(1);
    let sec = logical.size()[dim as usize] / groups;
    let (s, l) = balanced(sec, size as i64, rank as i64);
    if groups == 1 {
        return logical.narrow(dim, s, l);
    }
    let pieces: Vec<Tensor> = (0..groups)
        .map(|g| logical.narrow(dim, g * sec + s, l))
        .collect();
    Tensor::cat(&pieces, dim)
}

/// Gather the logical tensor over `comm`; also returns the bytes received
/// from the other ranks.
pub fn gather(
    comm: &dyn Communicator,
    local: &Tensor,
    split: TpSplit,
) -> Result<(Tensor, u64), CommError> {
    comm.all_gather_assembled(local, &|parts| assemble(parts, split))
}

/// A slice of one dimension, `start:stop:step` with Python semantics
/// (negative indices count from the end).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range1 {
    pub start: i64,
    pub stop: Option<i64>,
    pub step: i64,
}

/// `t` sliced by `reads` (`None`: the whole dimension; missing dimensions
/// whole).
fn apply(t: &Tensor, reads: &[Option<Range1>]) -> Tensor {
    let mut v = t.shallow_clone();
    for (d, r) in reads.iter().enumerate() {
        if let Some(r) = r {
            v = v.slice(d as i64, Some(r.start), r.stop, r.step.max(1));
        }
    }
    v
}

/// Gather only the slice `reads` of the logical tensor, when the slice keeps
/// the split dimension whole: every rank slices its part, the slices are
/// gathered and placed into a logical-shaped tensor whose other elements are
/// NaN (a hook that declared it reads only this slice never sees them).
/// `None` when the slice cuts the split dimension (gather everything then).
pub fn gather_slice(
    comm: &dyn Communicator,
    local: &Tensor,
    split: TpSplit,
    reads: &[Option<Range1>],
) -> Result<Option<(Tensor, u64)>, CommError> {
    let dim = norm_dim(local, split.dim) as usize;
    if reads.len() > local.dim() || reads.get(dim).is_some_and(Option::is_some) {
        return Ok(None);
    }
    let piece = apply(local, reads).contiguous();
    let (gathered, bytes) = comm.all_gather_assembled(&piece, &|parts| assemble(parts, split))?;
    // The slice keeps the split dimension whole: the gathered size there is
    // the logical one, no separate exchange needed.
    let mut shape = local.size();
    shape[dim] = gathered.size()[dim];
    let kind = local.kind();
    let fill = if matches!(
        kind,
        Kind::Float | Kind::Half | Kind::BFloat16 | Kind::Double
    ) {
        f64::NAN
    } else {
        0.0
    };
    let logical = Tensor::full(shape.as_slice(), fill, (kind, local.device()));
    apply(&logical, reads).copy_(&gathered);
    Ok(Some((logical, bytes)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    #[test]
    fn grouped_parts_round_trip() {
        // Logical [q0 q1 | k0 k1 | v0 v1] along dim 1, 2 ranks, 3 sections.
        let logical = Tensor::arange(2 * 12, (Kind::Float, Device::Cpu)).view([2, 12]);
        let s = TpSplit { dim: -1, groups: 3 };
        let parts: Vec<Tensor> = (0..2).map(|r| local_part(&logical, s, r, 2)).collect();
        assert_eq!(
            Vec::<f32>::try_from(parts[1].get(0)).unwrap(),
            vec![2.0, 3.0, 6.0, 7.0, 10.0, 11.0]
        );
        assert!(assemble(&parts, s).equal(&logical));
        // Uneven split: 7 features over 3 ranks.
        let l = Tensor::arange(7, (Kind::Float, Device::Cpu));
        let s = TpSplit { dim: 0, groups: 1 };
        let parts: Vec<Tensor> = (0..3).map(|r| local_part(&l, s, r, 3)).collect();
        assert_eq!(
            parts.iter().map(|p| p.size()[0]).collect::<Vec<_>>(),
            vec![3, 2, 2]
        );
        assert!(assemble(&parts, s).equal(&l));
    }
}
