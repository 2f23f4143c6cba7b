//! The real tokens of a padded batch, packed. In a batch of rows of
//! different lengths most of a forward's work is position-wise (every
//! projection, the MLP, the norms, the LM head), and a padded position's
//! share of it is thrown away. A packed stage runs those layers on
//! `[tokens, width]`, the real tokens only, and goes back to the padded
//! `[batch, seq, ...]` layout only where rows matter: for the attention
//! core (per-row masked attention, the KV cache) and for every hook, which
//! sees the activation it would see in a padded forward, with zeros at the
//! padded positions (no real position ever reads them: padded keys are
//! masked).
//!
//! A stage packs when its new positions hold padding (a padded prompt; not
//! the decode steps of generation, whose new tokens are all real).
//! `FLEXMODEL_NO_PACK=1` runs padded batches padded (for comparisons).

use tch::{Device, Tensor};

use super::error::ModelError;
use super::hook_site::HookSite;

/// Where the real tokens of a `[b, s]` step sit, in row-major order.
///
/// The packed length is rounded up to 16 sizes per octave (fewer than
/// `max(16, tokens / 8)` more rows, copies of the first real token, dropped
/// on unpacking):
/// batches of ever-different token counts would otherwise leave the
/// allocator holding blocks of every size, and a long harvest's memory
/// would grow with the dataset.
pub(crate) struct Pack {
    /// Flat indices into `b * s` of the real positions, `[tokens]`.
    index: Tensor,
    /// `index`, then the filler rows: what packing gathers, `[rows]`.
    gather: Tensor,
    tokens: i64,
    b: i64,
    s: i64,
}

/// `n` rounded up to a multiple of `max(16, next_power_of_two(n) / 16)`.
fn rounded(n: i64) -> i64 {
    let granule = ((n.max(1) as u64).next_power_of_two() as i64 / 16).max(16);
    (n + granule - 1) / granule * granule
}

impl Pack {
    /// The packing of a step of `s` new positions after `start` cached ones,
    /// or `None` when there is nothing to pack (no padding among them).
    /// `valid`: `[b, start + s]`, nonzero = real, as `stage::masks` takes it.
    pub fn of(
        valid: Option<&Tensor>,
        (b, s, start): (i64, i64, i64),
        device: Device,
    ) -> Option<Pack> {
        if std::env::var_os("FLEXMODEL_NO_PACK").is_some() {
            return None;
        }
        let real = valid?
            .to_device(device)
            .narrow(1, start, s)
            .ne(0)
            .reshape([-1]);
        let index = real.nonzero().reshape([-1]);
        let tokens = index.size()[0];
        if tokens == b * s {
            return None;
        }
        let rows = rounded(tokens).min(b * s);
        let gather = if rows > tokens && tokens > 0 {
            Tensor::cat(&[&index, &index.narrow(0, 0, 1).repeat([rows - tokens])], 0)
        } else {
            index.shallow_clone()
        };
        Some(Pack {
            index,
            gather,
            tokens,
            b,
            s,
        })
    }

    /// `[b, s, ...]` → `[rows, ...]` (the real tokens, then filler rows).
    pub fn pack(&self, x: &Tensor) -> Tensor {
        let mut shape = x.size();
        shape.splice(0..2, [self.b * self.s]);
        x.reshape(shape.as_slice()).index_select(0, &self.gather)
    }

    /// `[rows, ...]` → `[b, s, ...]`, zeros at the padded positions.
    pub fn unpack(&self, x: &Tensor) -> Tensor {
        let mut shape = x.size();
        shape[0] = self.b * self.s;
        let full = Tensor::zeros(shape.as_slice(), (x.kind(), x.device()));
        let full = full.index_copy(0, &self.index, &x.narrow(0, 0, self.tokens));
        shape.splice(0..1, [self.b, self.s]);
        full.view(shape.as_slice())
    }

    fn shallow_clone(&self) -> Pack {
        Pack {
            index: self.index.shallow_clone(),
            gather: self.gather.shallow_clone(),
            ..*self
        }
    }
}

/// Pack `x` (`[b, s, ...]`) when the step is packed.
pub(crate) fn pack(p: Option<&Pack>, x: Tensor) -> Tensor {
    match p {
        Some(p) => p.pack(&x),
        None => x,
    }
}

/// Back to `[b, s, ...]` when the step is packed.
pub(crate) fn unpack(p: Option<&Pack>, x: Tensor) -> Tensor {
    match p {
        Some(p) => p.unpack(&x),
        None => x,
    }
}

/// The hooks of a stage that may be packed: a packed activation
/// (`[tokens, width]`, two dimensions; every padded-layout point has at
/// least three) is shown to the hooks in the padded layout and packed again
/// after them, edits included. Unpacked stages pass straight through.
pub(crate) struct PackedSite<'a> {
    inner: &'a mut dyn HookSite,
    pack: Option<Pack>,
}

impl<'a> PackedSite<'a> {
    pub fn new(inner: &'a mut dyn HookSite, pack: Option<&Pack>) -> PackedSite<'a> {
        PackedSite {
            inner,
            pack: pack.map(Pack::shallow_clone),
        }
    }
}

impl HookSite for PackedSite<'_> {
    fn active(&self, point: &str) -> bool {
        self.inner.active(point)
    }

    fn fire(&mut self, point: &str, t: Tensor) -> Result<Tensor, ModelError> {
        match &self.pack {
            Some(p) if t.dim() == 2 => {
                let out = self.inner.fire(point, p.unpack(&t))?;
                Ok(p.pack(&out))
            }
            _ => self.inner.fire(point, t),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Kind;

    #[test]
    fn pack_unpack_round_trip() {
        let valid = Tensor::from_slice2(&[[0i64, 1, 1], [1, 1, 1]]);
        let p = Pack::of(Some(&valid), (2, 3, 0), Device::Cpu).expect("padding");
        assert_eq!(p.index.size(), [5]);
        let x = Tensor::arange(2 * 3 * 2, (Kind::Float, Device::Cpu)).view([2, 3, 2]);
        let packed = p.pack(&x);
        assert_eq!(packed.size(), [6, 2]);
        assert!(
            packed
                .narrow(0, 0, 5)
                .equal(&x.view([6, 2]).narrow(0, 1, 5))
        );
        let back = p.unpack(&packed);
        let expect = x.copy();
        let _ = expect.get(0).get(0).fill_(0.0);
        assert!(back.equal(&expect));
        let all = Tensor::ones([2, 3], (Kind::Int64, Device::Cpu));
        assert!(Pack::of(Some(&all), (2, 3, 0), Device::Cpu).is_none());
    }

    #[test]
    fn packed_lengths_take_few_sizes() {
        assert_eq!(rounded(1), 16);
        assert_eq!(rounded(576), 576);
        assert_eq!(rounded(577), 640);
        assert_eq!(rounded(1000), 1024);
        for n in 1..5000 {
            let r = rounded(n);
            assert!(r >= n && r - n < (n / 8 + 1).max(16), "{n} -> {r}");
        }
    }
}
