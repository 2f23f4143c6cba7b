//! Loading weights for one rank: a [`Loader`] carries the checkpoint's
//! weights, the rank's shard, dtype and device, and a weight-name prefix
//! that components extend ([`Loader::pp`]) as candle's `VarBuilder` does, so
//! each component loads its own weights by their checkpoint names.

use tch::{Device, Kind, Tensor};

use super::error::ModelError;
use super::shard::Shard;
use super::weights::Weights;

#[derive(Clone)]
pub(crate) struct Loader<'w> {
    weights: &'w Weights,
    pub shard: &'w Shard,
    pub kind: Kind,
    pub device: Device,
    prefix: String,
    /// What needs the weights (in errors: "needed by GPT-2").
    needed_by: &'static str,
}

impl<'w> Loader<'w> {
    pub fn new(
        weights: &'w Weights,
        shard: &'w Shard,
        kind: Kind,
        device: Device,
        needed_by: &'static str,
    ) -> Self {
        Loader {
            weights,
            shard,
            kind,
            device,
            prefix: String::new(),
            needed_by,
        }
    }

    /// The loader of the sub-module `name` (`h.0` -> `transformer.h.0`).
    pub fn pp(&self, name: impl AsRef<str>) -> Loader<'w> {
        Loader {
            prefix: self.path(name.as_ref()),
            ..self.clone()
        }
    }

    /// The checkpoint name of `name` under this prefix.
    pub fn path(&self, name: &str) -> String {
        super::points::join(&self.prefix, name)
    }

    /// `name`, whole, with the given stored shape.
    pub fn get(&self, name: &str, shape: &[i64]) -> Result<Tensor, ModelError> {
        self.weights.get_shaped(
            &self.path(name),
            shape,
            self.kind,
            self.device,
            self.needed_by,
        )
    }

    /// Parts `(start, len)` of dimension `dim` of `name` (stored with shape
    /// `shape`), concatenated: only those bytes are read.
    pub fn parts(
        &self,
        name: &str,
        shape: &[i64],
        dim: usize,
        parts: &[(i64, i64)],
    ) -> Result<Tensor, ModelError> {
        if let [(start, len)] = parts {
            return self.weights.get_part(
                &self.path(name),
                shape,
                dim,
                *start,
                *len,
                self.kind,
                self.device,
                self.needed_by,
            );
        }
        self.weights.get_parts(
            &self.path(name),
            shape,
            dim,
            parts,
            self.kind,
            self.device,
            self.needed_by,
        )
    }

    /// This rank's slice of dimension `dim` of `name` under tensor
    /// parallelism (`sections` equal sections, each split over the group),
    /// or the whole tensor on one rank.
    pub fn split(
        &self,
        name: &str,
        shape: &[i64],
        dim: usize,
        sections: i64,
    ) -> Result<Tensor, ModelError> {
        if self.shard.tp_size == 1 {
            return self.get(name, shape);
        }
        let sec = shape[dim] / sections;
        let (s, l) = self.shard.part(sec);
        let parts: Vec<(i64, i64)> = (0..sections).map(|g| (g * sec + s, l)).collect();
        self.parts(name, shape, dim, &parts)
    }

    /// This rank's rows of a vocabulary-sized table `name` (`[vocab, d]`):
    /// (first row, the rows).
    pub fn vocab_rows(&self, name: &str, vocab: i64, d: i64) -> Result<(i64, Tensor), ModelError> {
        let (offset, rows) = self.shard.part(vocab);
        Ok((offset, self.parts(name, &[vocab, d], 0, &[(offset, rows)])?))
    }
}
