//! A projection's weight, held once. An f32 weight on the CPU lives only in
//! oneDNN's layout (the fast path's, see `onednn`); its plain tensor is
//! materialised from it when something needs it (the parameters of a
//! backward pass) and dropped again after ([`Weight::release`]). Other
//! weights (other dtypes and devices) stay plain. A weight shared with an
//! embedding table (a tied LM head) keeps both: the lookup needs the plain
//! table.

use parking_lot::Mutex;
use tch::Tensor;

use super::onednn::{self, Packed};

pub(crate) struct Weight {
    /// In the checkpoint's layout (`[out, in]`; Conv1D `[in, out]`); for a
    /// packed weight, only while materialised.
    plain: Mutex<Option<Tensor>>,
    packed: Option<Packed>,
    /// Conv1D: the packed copy is the plain one transposed.
    transposed: bool,
    /// Keep the plain tensor (shared with an embedding table).
    keep: bool,
}

impl Weight {
    /// `w` (`transposed`: stored `[in, out]`) with its `bias`, packed where
    /// oneDNN applies; the plain tensor dropped unless `keep`.
    pub fn new(w: Tensor, bias: Option<&Tensor>, transposed: bool, keep: bool) -> Weight {
        let packed = if transposed {
            onednn::pack(&w.tr(), bias)
        } else {
            onednn::pack(&w, bias)
        };
        let plain = if packed.is_none() || keep {
            Some(w)
        } else {
            None
        };
        Weight {
            plain: Mutex::new(plain),
            packed,
            transposed,
            keep,
        }
    }

    /// The oneDNN copy, when the fast path applies: packed, and no
    /// materialised plain tensor is recording gradients.
    pub fn fast(&self) -> Option<&Packed> {
        let p = self.packed.as_ref()?;
        match &*self.plain.lock() {
            Some(t) if t.requires_grad() => None,
            _ => Some(p),
        }
    }

    /// The plain tensor (a handle: gradients recorded on it are the
    /// weight's), materialised from the packed copy if needed.
    pub fn plain(&self) -> Tensor {
        let mut slot = self.plain.lock();
        if let Some(t) = &*slot {
            return t.shallow_clone();
        }
        let dense = self
            .packed
            .as_ref()
            .map(onednn::dense)
            .unwrap_or_else(|| Tensor::zeros([0], (tch::Kind::Float, tch::Device::Cpu)));
        let t = if self.transposed {
            dense.tr().contiguous()
        } else {
            dense
        };
        *slot = Some(t.shallow_clone());
        t
    }

    /// Drop a materialised plain tensor (the packed copy stays).
    pub fn release(&self) {
        if self.packed.is_some() && !self.keep {
            *self.plain.lock() = None;
        }
    }
}
