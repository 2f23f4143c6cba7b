//! A batch of token ids: one tensor `[batch, seq]`, and, when its prompts
//! differ in length, which positions hold real tokens (transformers'
//! `attention_mask`). The model builds the attention mask and the position
//! ids from it, so every prompt's real tokens compute what they compute
//! alone, on every layout.

use tch::{Kind, Tensor};

use super::FlexError;

/// Where the padding of a shorter prompt goes (`"right"` or `"left"` in
/// JSON).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Padding {
    /// After the prompt (the default for a forward).
    #[default]
    Right,
    /// Before the prompt (what generation uses: every row ends at its
    /// last real token).
    Left,
}

impl std::str::FromStr for Padding {
    type Err = String;
    fn from_str(s: &str) -> Result<Padding, String> {
        match s {
            "right" => Ok(Padding::Right),
            "left" => Ok(Padding::Left),
            other => Err(format!("padding must be left or right, got {other:?}")),
        }
    }
}

/// Token ids `[batch, seq]` (int64) and, for a padded batch, its
/// `attention_mask` (`[batch, seq]`, int64, 1 = real token).
#[derive(Debug)]
pub struct Batch {
    pub ids: Tensor,
    pub attention_mask: Option<Tensor>,
}

impl Batch {
    /// Prompts of any lengths, padded on `padding`'s side with `pad_id`
    /// (a pad token's value never matters: padded positions are masked).
    /// Prompts of one length give a batch without a mask.
    pub fn pad(prompts: &[Vec<i64>], padding: Padding, pad_id: i64) -> Result<Batch, FlexError> {
        if prompts.is_empty() {
            return Err(FlexError::Input("no prompts to batch".into()));
        }
        if let Some(i) = prompts.iter().position(Vec::is_empty) {
            return Err(FlexError::Input(format!("prompt {i} has no tokens")));
        }
        let len = prompts.iter().map(Vec::len).max().unwrap_or(0);
        let (mut ids, mut mask) = (Vec::new(), Vec::new());
        for p in prompts {
            let pad = len - p.len();
            let (before, after) = match padding {
                Padding::Left => (pad, 0),
                Padding::Right => (0, pad),
            };
            ids.extend(std::iter::repeat_n(pad_id, before));
            ids.extend_from_slice(p);
            ids.extend(std::iter::repeat_n(pad_id, after));
            mask.extend(std::iter::repeat_n(0i64, before));
            mask.extend(std::iter::repeat_n(1i64, p.len()));
            mask.extend(std::iter::repeat_n(0i64, after));
        }
        let shape = [prompts.len() as i64, len as i64];
        let padded = prompts.iter().any(|p| p.len() != len);
        Ok(Batch {
            ids: Tensor::from_slice(&ids).view(shape),
            attention_mask: padded.then(|| Tensor::from_slice(&mask).view(shape)),
        })
    }

    /// A batch with ids `[seq]` or `[batch, seq]` and an optional mask of
    /// the same shape; checked.
    pub fn new(ids: &Tensor, attention_mask: Option<&Tensor>) -> Result<Batch, FlexError> {
        let ids = super::batch_ids(ids)?;
        let Some(m) = attention_mask else {
            return Ok(Batch {
                ids,
                attention_mask: None,
            });
        };
        let m = super::batch_ids(m)?;
        if m.size() != ids.size() {
            return Err(FlexError::Input(format!(
                "attention_mask must have the ids' shape {:?}, got {:?}",
                ids.size(),
                m.size()
            )));
        }
        let m = m.to_kind(Kind::Int64).ne(0).to_kind(Kind::Int64);
        if m.numel() > 0 && m.sum(Kind::Int64).int64_value(&[]) == m.numel() as i64 {
            return Ok(Batch {
                ids,
                attention_mask: None,
            });
        }
        let rows: Vec<Vec<i64>> = Vec::try_from(&m.to_device(tch::Device::Cpu))
            .map_err(|e: tch::TchError| FlexError::Input(e.to_string()))?;
        for (r, row) in rows.iter().enumerate() {
            // One run of real tokens per row: padding left or right only.
            let before = std::iter::once(&0).chain(row.iter());
            let runs = row
                .iter()
                .zip(before)
                .filter(|(v, p)| **v == 1 && **p == 0)
                .count();
            if runs == 0 {
                return Err(FlexError::Input(format!(
                    "row {r} of the attention_mask has no real token"
                )));
            }
            if runs > 1 {
                return Err(FlexError::Input(format!(
                    "row {r} of the attention_mask has padding between real tokens: \
                     pad on the left or the right only"
                )));
            }
        }
        Ok(Batch {
            ids,
            attention_mask: Some(m),
        })
    }

    /// Real tokens per row.
    pub fn lengths(&self) -> Vec<i64> {
        match &self.attention_mask {
            Some(m) => Vec::try_from(m.sum_dim_intlist(1, false, Kind::Int64)).unwrap_or_default(),
            None => vec![self.ids.size()[1]; self.ids.size()[0] as usize],
        }
    }

    /// Each row's real token ids.
    pub fn prompts(&self) -> Vec<Vec<i64>> {
        let ids: Vec<Vec<i64>> =
            Vec::try_from(&self.ids.to_device(tch::Device::Cpu)).unwrap_or_default();
        match &self.attention_mask {
            None => ids,
            Some(m) => {
                let m: Vec<Vec<i64>> = Vec::try_from(m).unwrap_or_default();
                ids.into_iter()
                    .zip(m)
                    .map(|(r, m)| {
                        r.into_iter()
                            .zip(m)
                            .filter(|(_, v)| *v != 0)
                            .map(|(t, _)| t)
                            .collect()
                    })
                    .collect()
            }
        }
    }

    /// The same prompts padded on the left (each row ending at its last real
    /// token), as generation needs them.
    pub fn left_padded(&self) -> Result<Batch, FlexError> {
        if self.attention_mask.is_none() {
            return Ok(self.copy());
        }
        Batch::pad(&self.prompts(), Padding::Left, 0)
    }

    /// A copy that owns its tensors (for another thread).
    pub fn copy(&self) -> Batch {
        Batch {
            ids: self.ids.copy(),
            attention_mask: self.attention_mask.as_ref().map(Tensor::copy),
        }
    }
}

/// What the passes take: token ids (`[seq]` or `[batch, seq]`), or a
/// [`Batch`] with its mask.
pub trait Input {
    fn to_batch(&self) -> Result<Batch, FlexError>;
}

impl Input for Tensor {
    fn to_batch(&self) -> Result<Batch, FlexError> {
        Batch::new(self, None)
    }
}

impl Input for Batch {
    fn to_batch(&self) -> Result<Batch, FlexError> {
        Batch::new(&self.ids, self.attention_mask.as_ref())
    }
}

/// Batches of `n` prompts: `size` each, at least `dp` (one per
/// data-parallel replica; a short last batch joins the one before):
/// `(first, len)` each.
pub fn batch_bounds(n: usize, size: usize, dp: usize) -> Result<Vec<(usize, usize)>, FlexError> {
    if n < dp {
        return Err(FlexError::Input(format!(
            "{dp} data-parallel replicas need at least {dp} prompts (got {n})"
        )));
    }
    let size = size.max(dp).max(1);
    let mut v: Vec<(usize, usize)> = (0..n).step_by(size).map(|f| (f, size.min(n - f))).collect();
    if let [.., prev, last] = v.as_mut_slice()
        && last.1 < dp
    {
        prev.1 += last.1;
        v.pop();
    }
    Ok(v)
}
