//! The key/value cache of incremental decoding: per layer (of this rank's
//! stage), the keys and values of every position seen so far, `[batch,
//! kv_heads, positions, head_dim]` (this rank's heads under tensor
//! parallelism), keys after rotary embeddings, as transformers caches them.

use tch::Tensor;

#[derive(Default)]
pub struct KvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
    /// Positions cached (the next token's position).
    len: i64,
}

impl KvCache {
    pub fn new() -> KvCache {
        KvCache::default()
    }

    /// Number of positions already cached.
    pub fn len(&self) -> i64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Append this step's keys and values of layer `i` (`[b, h, s, d]`);
    /// returns all of them so far.
    pub(crate) fn extend(&mut self, i: usize, k: Tensor, v: Tensor) -> (Tensor, Tensor) {
        if self.layers.len() <= i {
            self.layers.resize_with(i + 1, || None);
        }
        let kv = match self.layers[i].take() {
            Some((pk, pv)) => (Tensor::cat(&[pk, k], 2), Tensor::cat(&[pv, v], 2)),
            None => (k, v),
        };
        self.layers[i] = Some((kv.0.shallow_clone(), kv.1.shallow_clone()));
        kv
    }

    /// Record that a step of `s` positions went through every layer.
    pub(crate) fn advance(&mut self, s: i64) {
        self.len += s;
    }
}

/// Keys and values to attend to: this step's, or with the cache's.
pub(crate) fn with_cache(
    cache: &mut Option<&mut KvCache>,
    layer: usize,
    k: Tensor,
    v: Tensor,
) -> (Tensor, Tensor) {
    match cache {
        Some(c) => c.extend(layer, k, v),
        None => (k, v),
    }
}
