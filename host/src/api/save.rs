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

struct Cpu {
    dtype: Dtype,
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

impl View for &Cpu {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.bytes)
    }
    fn data_len(&self) -> usize {
        self.bytes.len()
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
    let c = t.to_device(Device::Cpu).contiguous();
    let n = c.numel() * c.kind().elt_size_in_bytes();
    let mut bytes = vec![0u8; n];
    if n > 0 {
        c.f_copy_data_u8(&mut bytes, c.numel())
            .map_err(|e| FlexError::Input(format!("output {key:?}: {e}")))?;
    }
    Ok(Cpu {
        dtype: dt,
        shape: c.size().iter().map(|&d| d as usize).collect(),
        bytes,
    })
}

/// Write `tensors` to `path` with `producers` in the metadata. Nothing is
/// written if any tensor cannot be saved.
pub fn save_safetensors(
    path: &Path,
    tensors: &BTreeMap<String, Tensor>,
    producers: &BTreeMap<String, String>,
) -> Result<(), FlexError> {
    let mut cpu = Vec::with_capacity(tensors.len());
    for (k, t) in tensors {
        cpu.push((k.clone(), to_cpu(k, t)?));
    }
    let meta: HashMap<String, String> = producers
        .iter()
        .filter(|(k, _)| tensors.contains_key(*k))
        .map(|(k, p)| (producer_key(k), p.clone()))
        .collect();
    let data = cpu.iter().map(|(k, c)| (k.as_str(), c));
    safetensors::serialize_to_file(data, (!meta.is_empty()).then_some(meta), path)
        .map_err(|e| FlexError::Input(format!("writing {}: {e}", path.display())))
}
