//! Saving a forward's outputs as a safetensors file that records, in its
//! metadata, which hook emitted each tensor (`flexmodel.producer.<key>` ->
//! `name@version (sha256:…)`), so a file shared between teams says where
//! every tensor came from.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use safetensors::{Dtype, View};
use tch::{Device, Kind, Tensor};

use super::FlexError;

/// Metadata key recording the producer of output `key`.
pub fn producer_key(key: &str) -> String {
    format!("flexmodel.producer.{key}")
}

/// A contiguous CPU tensor viewed as safetensors bytes (no copy for a
/// tensor that already is contiguous on the CPU).
struct Cpu {
    dtype: Dtype,
    shape: Vec<usize>,
    tensor: Tensor,
    len: usize,
}

impl View for &Cpu {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        if self.len == 0 {
            return Cow::Borrowed(&[]);
        }
        // SAFETY: `tensor` is a contiguous CPU tensor of `len` bytes, owned
        // by `self` and not written while borrowed.
        Cow::Borrowed(unsafe {
            std::slice::from_raw_parts(self.tensor.data_ptr() as *const u8, self.len)
        })
    }
    fn data_len(&self) -> usize {
        self.len
    }
}

fn dtype(kind: Kind) -> Option<Dtype> {
    Some(match kind {
        Kind::Float => Dtype::F32,
        Kind::Double => Dtype::F64,
        Kind::Half => Dtype::F16,
        Kind::BFloat16 => Dtype::BF16,
        Kind::Int64 => Dtype::I64,
        Kind::Int => Dtype::I32,
        Kind::Int16 => Dtype::I16,
        Kind::Int8 => Dtype::I8,
        Kind::Uint8 => Dtype::U8,
        Kind::Bool => Dtype::BOOL,
        _ => return None,
    })
}

fn to_cpu(key: &str, t: &Tensor) -> Result<Cpu, FlexError> {
    let dt = dtype(t.kind()).ok_or_else(|| {
        FlexError::Input(format!(
            "output {key:?} has unsupported dtype {:?}",
            t.kind()
        ))
    })?;
    let c = t
        .f_to_device(Device::Cpu)
        .and_then(|c| c.f_contiguous())
        .map_err(|e| FlexError::Input(format!("output {key:?}: {e}")))?;
    Ok(Cpu {
        dtype: dt,
        shape: c.size().iter().map(|&d| d as usize).collect(),
        len: c.numel() * c.kind().elt_size_in_bytes(),
        tensor: c,
    })
}

/// Write `tensors` to `path` with `producers` in the metadata. Nothing is
/// written if any tensor cannot be saved.
pub fn save_safetensors(
    path: &Path,
    tensors: &BTreeMap<String, Tensor>,
    producers: &BTreeMap<String, String>,
) -> Result<(), FlexError> {
    save_safetensors_with(path, tensors, producers, &BTreeMap::new())
}

/// [`save_safetensors`] with `extra` metadata entries besides the
/// producers (e.g. `flexmodel.plugins`: every plugin that ran).
pub fn save_safetensors_with(
    path: &Path,
    tensors: &BTreeMap<String, Tensor>,
    producers: &BTreeMap<String, String>,
    extra: &BTreeMap<String, String>,
) -> Result<(), FlexError> {
    let mut cpu = Vec::with_capacity(tensors.len());
    for (k, t) in tensors {
        cpu.push((k.clone(), to_cpu(k, t)?));
    }
    let meta: HashMap<String, String> = producers
        .iter()
        .filter(|(k, _)| tensors.contains_key(*k))
        .map(|(k, p)| (producer_key(k), p.clone()))
        .chain(extra.iter().map(|(k, v)| (k.clone(), v.clone())))
        .collect();
    let data = cpu.iter().map(|(k, c)| (k.as_str(), c));
    safetensors::serialize_to_file(data, (!meta.is_empty()).then_some(meta), path)
        .map_err(|e| FlexError::Input(format!("writing {}: {e}", path.display())))
}
