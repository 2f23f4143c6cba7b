//! From one padded batch's logits and outputs to each prompt's, in the form
//! that prompt run alone gives: the one place `flexmodel run` and the
//! service (where several jobs share a batch) cut a batch into prompts.

use std::collections::HashMap;

use tch::Tensor;

use super::facade::FlexModel;
use crate::engine::Padding;

/// A hook point's number of dimensions and those that grow with the
/// sequence (the token dimension first).
#[derive(Debug, Clone)]
pub struct SeqDims {
    pub rank: usize,
    pub seq: Vec<usize>,
}

/// Every hook point's [`SeqDims`] (from its shapes at two lengths).
pub fn seq_dims(fm: &FlexModel) -> HashMap<String, SeqDims> {
    let longer = fm.points(1, 2);
    fm.points(1, 1)
        .into_iter()
        .zip(longer)
        .map(|(a, b)| {
            let seq = (0..a.shape.len())
                .filter(|&i| a.shape.get(i) != b.shape.get(i))
                .collect();
            (
                a.name,
                SeqDims {
                    rank: a.shape.len(),
                    seq,
                },
            )
        })
        .collect()
}

/// The prompts of one batch (their lengths) and how it was padded.
pub struct Rows<'a> {
    pub lens: Vec<i64>,
    /// The batch's sequence length (the longest prompt's, or more).
    pub seq_len: i64,
    pub padding: Padding,
    /// Whether the batch had an attention mask (prompts of unequal lengths).
    pub padded: bool,
    /// Hook point -> its layout.
    pub dims: &'a HashMap<String, SeqDims>,
}

impl Rows<'_> {
    /// Row `j`'s real tokens `(start, len)` in the padded batch.
    pub fn span(&self, j: usize) -> (i64, i64) {
        self.span_in(j, self.seq_len)
    }

    /// Row `j`'s real tokens `(start, len)` along a sequence dimension of
    /// `size` positions (the batch's, or a longer batch's it shared).
    fn span_in(&self, j: usize, size: i64) -> (i64, i64) {
        let len = self.lens[j];
        match self.padding {
            Padding::Left => (size - len, len),
            Padding::Right => (0, len),
        }
    }

    /// Row `j`'s logits (`[1, len, vocab]`) of the batch's `[n, seq,
    /// vocab]` (`seq` may be a longer batch's).
    pub fn logits(&self, logits: &Tensor, j: usize) -> Tensor {
        let (start, len) = self.span_in(j, logits.size()[1]);
        logits.narrow(0, j as i64, 1).narrow(1, start, len)
    }

    /// Prompt `j`'s part of an output, in the form a batch of that prompt
    /// alone gives: its row of a batched output, or, from a padded batch's
    /// real-tokens-only output (one dimension fewer: `[tokens, ...]`, as
    /// `retrieve` saves by default), its tokens put back in the point's
    /// layout (`[1, ...]`, token dimension in place, other sequence
    /// dimensions such as attention keys cut to its real positions).
    pub fn part(&self, key: &str, t: &Tensor, j: usize) -> Tensor {
        let n = self.lens.len() as i64;
        let point = key.split(':').next().unwrap_or(key);
        let form = self.dims.get(point);
        if let Some(d) = form.filter(|d| self.padded && t.dim() + 1 == d.rank && t.dim() > 0) {
            let total: i64 = self.lens.iter().sum();
            let (offset, len) = match t.size()[0] {
                m if m == total => (self.lens[..j].iter().sum(), self.lens[j]),
                m if m == n => (j as i64, 1),
                _ => return t.shallow_clone(),
            };
            let mut x = t.narrow(0, offset, len).unsqueeze(0);
            if let Some((&tok, rest)) = d.seq.split_first() {
                x = x.movedim([1], [tok as i64]);
                for &k in rest {
                    let (start, len) = self.span_in(j, x.size()[k]);
                    x = x.narrow(k as i64, start, len);
                }
            }
            return x;
        }
        if t.dim() > 0 && t.size()[0] == n {
            return t.narrow(0, j as i64, 1);
        }
        t.shallow_clone()
    }

    /// An output in the point's full layout over a longer batch (`[n,
    /// longer, ...]`) cut to this batch's `seq_len` along every sequence
    /// dimension (its end for right padding, its start for left): what the
    /// batch alone would have given. Anything else is returned as it is.
    pub fn cut(&self, key: &str, t: &Tensor, longer: i64) -> Tensor {
        let point = key.split(':').next().unwrap_or(key);
        let Some(d) = self.dims.get(point) else {
            return t.shallow_clone();
        };
        if t.dim() != d.rank || longer == self.seq_len {
            return t.shallow_clone();
        }
        let start = match self.padding {
            Padding::Right => 0,
            Padding::Left => longer - self.seq_len,
        };
        let mut x = t.shallow_clone();
        for &k in &d.seq {
            if x.size().get(k).copied() == Some(longer) {
                x = x.narrow(k as i64, start, self.seq_len);
            }
        }
        x
    }
}
