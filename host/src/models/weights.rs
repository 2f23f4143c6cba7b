//! Checkpoint tensors from a Hugging Face model folder: `model.safetensors`,
//! or a sharded set listed in `model.safetensors.index.json`. Files are
//! memory-mapped; a tensor is copied out only when asked for, converted to the
//! requested dtype and device, and its pages of the mapping are then given
//! back (`MADV_DONTNEED`: the page cache keeps them, this process's resident
//! set does not), so loading never holds the file and the model at once.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};
use tch::{Device, Kind, Tensor};

use super::error::ModelError;

struct Entry {
    file: usize,
    dtype: Dtype,
    shape: Vec<i64>,
    /// Byte range in the file.
    start: usize,
    end: usize,
}

/// The tensors of a checkpoint, by name as stored.
pub struct Weights {
    files: Vec<(PathBuf, Mmap)>,
    entries: HashMap<String, Entry>,
    /// `__metadata__` of the files' headers, merged.
    metadata: HashMap<String, String>,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ModelError + '_ {
    move |source| ModelError::Io {
        path: path.display().to_string(),
        source,
    }
}

fn stored_kind(dtype: Dtype, name: &str) -> Result<Kind, ModelError> {
    match dtype {
        Dtype::F32 => Ok(Kind::Float),
        Dtype::F16 => Ok(Kind::Half),
        Dtype::BF16 => Ok(Kind::BFloat16),
        Dtype::F64 => Ok(Kind::Double),
        Dtype::I64 => Ok(Kind::Int64),
        other => Err(ModelError::UnsupportedDtype(format!(
            "{other:?} (tensor `{name}`)"
        ))),
    }
}

impl Weights {
    /// Open the safetensors file(s) of the model folder `dir`.
    pub fn open(dir: &Path) -> Result<Weights, ModelError> {
        let single = dir.join("model.safetensors");
        let index = dir.join("model.safetensors.index.json");
        let files: Vec<PathBuf> = if single.exists() {
            vec![single]
        } else if index.exists() {
            let text = std::fs::read_to_string(&index).map_err(io(&index))?;
            let v: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| ModelError::Config {
                    file: index.display().to_string(),
                    message: e.to_string(),
                })?;
            let map = v
                .get("weight_map")
                .and_then(|m| m.as_object())
                .ok_or_else(|| ModelError::Config {
                    file: index.display().to_string(),
                    message: "no `weight_map` object".into(),
                })?;
            let mut names: Vec<String> = map
                .values()
                .filter_map(|f| f.as_str().map(String::from))
                .collect();
            names.sort();
            names.dedup();
            names.into_iter().map(|f| dir.join(f)).collect()
        } else {
            return Err(ModelError::Io {
                path: single.display().to_string(),
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "neither model.safetensors nor model.safetensors.index.json exists",
                ),
            });
        };
        Self::from_files(files)
    }

    /// Open one safetensors file.
    pub fn open_file(path: &Path) -> Result<Weights, ModelError> {
        Self::from_files(vec![path.to_path_buf()])
    }

    fn from_files(files: Vec<PathBuf>) -> Result<Weights, ModelError> {
        let mut w = Weights {
            files: Vec::new(),
            entries: HashMap::new(),
            metadata: HashMap::new(),
        };
        for (i, path) in files.into_iter().enumerate() {
            let f = std::fs::File::open(&path).map_err(io(&path))?;
            // SAFETY: the file is opened read-only; a checkpoint modified while
            // mapped is outside what we can guard against (as in every loader).
            let map = unsafe { Mmap::map(&f) }.map_err(io(&path))?;
            let st = SafeTensors::deserialize(&map).map_err(|e| ModelError::Safetensors {
                path: path.display().to_string(),
                message: e.to_string(),
            })?;
            if let Ok((_, meta)) = SafeTensors::read_metadata(&map)
                && let Some(m) = meta.metadata()
            {
                w.metadata
                    .extend(m.iter().map(|(k, v)| (k.clone(), v.clone())));
            }
            let base = map.as_ptr() as usize;
            for (name, view) in st.tensors() {
                let data = view.data();
                let start = data.as_ptr() as usize - base;
                w.entries.insert(
                    name.clone(),
                    Entry {
                        file: i,
                        dtype: view.dtype(),
                        shape: view.shape().iter().map(|&d| d as i64).collect(),
                        start,
                        end: start + data.len(),
                    },
                );
            }
            w.files.push((path, map));
        }
        Ok(w)
    }

    /// Done with bytes `start..end` of file `file` (copied out): drop the
    /// whole pages inside from this process's resident set. Best effort.
    fn release(&self, file: usize, start: usize, end: usize) {
        const PAGE: usize = 4096;
        let (first, last) = (start.div_ceil(PAGE) * PAGE, end / PAGE * PAGE);
        if last > first {
            // SAFETY: a read-only private file mapping: dropped pages are
            // read back from the file on the next access; nothing borrows
            // these bytes now (the tensor holds its own copy).
            let _ = unsafe {
                self.files[file].1.unchecked_advise_range(
                    memmap2::UncheckedAdvice::DontNeed,
                    first,
                    last - first,
                )
            };
        }
    }

    /// A `__metadata__` entry of the header(s).
    pub fn metadata(&self, key: &str) -> Option<String> {
        self.metadata.get(key).cloned()
    }

    pub fn contains(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }

    /// Names of every stored tensor.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }

    /// Stored shape of `name`.
    pub fn shape(&self, name: &str) -> Option<&[i64]> {
        self.entries.get(name).map(|e| e.shape.as_slice())
    }

    /// Load `name` as `kind` on `device`; `needed_by` names what needs it in
    /// the error if it is missing.
    pub fn get(
        &self,
        name: &str,
        kind: Kind,
        device: Device,
        needed_by: &str,
    ) -> Result<Tensor, ModelError> {
        let e = self
            .entries
            .get(name)
            .ok_or_else(|| ModelError::MissingTensor {
                name: name.to_string(),
                needed_by: needed_by.to_string(),
            })?;
        let stored = stored_kind(e.dtype, name)?;
        let bytes = &self.files[e.file].1[e.start..e.end];
        let t = Tensor::f_from_data_size(bytes, &e.shape, stored)?;
        self.release(e.file, e.start, e.end);
        Ok(t.to_kind(kind).to_device(device))
    }

    /// Part of `name` (stored with shape `full`): the indices
    /// `[start, start + len)` of dimension `dim`, as `kind` on `device`. Only
    /// those bytes are read from the file (a rank loads its slice of a
    /// tensor-parallel weight, not the whole tensor).
    #[allow(clippy::too_many_arguments)]
    pub fn get_part(
        &self,
        name: &str,
        full: &[i64],
        dim: usize,
        start: i64,
        len: i64,
        kind: Kind,
        device: Device,
        needed_by: &str,
    ) -> Result<Tensor, ModelError> {
        let e = self
            .entries
            .get(name)
            .ok_or_else(|| ModelError::MissingTensor {
                name: name.to_string(),
                needed_by: needed_by.to_string(),
            })?;
        if e.shape != full {
            return Err(ModelError::BadShape {
                name: name.into(),
                found: e.shape.clone(),
                expected: full.to_vec(),
            });
        }
        if dim >= full.len() || start < 0 || len < 0 || start + len > full[dim] {
            return Err(ModelError::Input(format!(
                "slice [{start}, {}) of dimension {dim} is outside `{name}` {full:?}",
                start + len
            )));
        }
        let stored = stored_kind(e.dtype, name)?;
        let es = e.dtype.bitsize() / 8;
        let outer: i64 = full[..dim].iter().product();
        let inner: i64 = full[dim + 1..].iter().product();
        let bytes = &self.files[e.file].1[e.start..e.end];
        let run = (len * inner) as usize * es;
        let mut out = Vec::with_capacity(outer as usize * run);
        for o in 0..outer {
            let at = ((o * full[dim] + start) * inner) as usize * es;
            out.extend_from_slice(&bytes[at..at + run]);
        }
        let mut shape = full.to_vec();
        shape[dim] = len;
        let t = Tensor::f_from_data_size(&out, &shape, stored)?;
        self.release(e.file, e.start, e.end);
        Ok(t.to_kind(kind).to_device(device))
    }

    /// Several parts of dimension `dim` of `name`, concatenated in order.
    #[allow(clippy::too_many_arguments)]
    pub fn get_parts(
        &self,
        name: &str,
        full: &[i64],
        dim: usize,
        parts: &[(i64, i64)],
        kind: Kind,
        device: Device,
        needed_by: &str,
    ) -> Result<Tensor, ModelError> {
        let ts = parts
            .iter()
            .map(|&(s, l)| self.get_part(name, full, dim, s, l, kind, device, needed_by))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Tensor::cat(&ts, dim as i64))
    }

    /// Like [`Self::get`], checking the shape.
    pub fn get_shaped(
        &self,
        name: &str,
        shape: &[i64],
        kind: Kind,
        device: Device,
        needed_by: &str,
    ) -> Result<Tensor, ModelError> {
        let t = self.get(name, kind, device, needed_by)?;
        if t.size() != shape {
            return Err(ModelError::BadShape {
                name: name.into(),
                found: t.size(),
                expected: shape.to_vec(),
            });
        }
        Ok(t)
    }
}
