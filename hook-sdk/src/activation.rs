//! The activation a hook is called on (held by the host) and emitting
//! tensors into the output dictionary.

use crate::__private::flexmodel::hook::output as wout;
use crate::{__private, DType, Result, Slice};

/// Elements per chunk in [`Activation::for_each_chunk`] (64 KiB of f32).
pub const CHUNK: usize = 16 * 1024;

/// The activation a hook is called on, held by the host.
pub struct Activation<'a> {
    raw: &'a __private::RawActivation,
    shape: Vec<usize>,
    dtype: DType,
}

impl<'a> Activation<'a> {
    /// The raw WIT handle (for tests that call the host interfaces directly).
    #[doc(hidden)]
    pub fn raw(&self) -> &'a __private::RawActivation {
        self.raw
    }

    #[doc(hidden)]
    pub fn __new(raw: &'a __private::RawActivation, shape: Vec<usize>, dtype: DType) -> Self {
        Activation { raw, shape, dtype }
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }
    pub fn dtype(&self) -> DType {
        self.dtype
    }
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
    /// Whether the host lets this hook write.
    pub fn writable(&self) -> bool {
        self.raw.writable()
    }

    /// Elements `[offset, offset+len)` (row-major) as f32.
    pub fn read(&self, offset: usize, len: usize) -> Result<Vec<f32>> {
        Ok(self.raw.read(offset as u64, len as u64)?)
    }
    /// Elements `[offset, offset+len)` as raw little-endian bytes of the native dtype.
    pub fn read_bytes(&self, offset: usize, len: usize) -> Result<Vec<u8>> {
        Ok(self.raw.read_bytes(offset as u64, len as u64)?)
    }
    /// A strided slice as f32, row-major over the slice.
    pub fn read_slice(&self, s: &Slice) -> Result<Vec<f32>> {
        Ok(self.raw.read_slice(&s.wit())?)
    }
    /// Shape of a slice.
    pub fn slice_shape(&self, s: &Slice) -> Result<Vec<usize>> {
        Ok(self
            .raw
            .slice_shape(&s.wit())?
            .into_iter()
            .map(|d| d as usize)
            .collect())
    }
    /// The whole activation as f32 (copies everything: prefer slices or chunks).
    pub fn read_all(&self) -> Result<Vec<f32>> {
        self.read(0, self.numel())
    }
    /// Visit the whole activation in chunks of at most [`CHUNK`] elements:
    /// `f(offset, values)`. Moves every byte once, in cache-sized pieces.
    pub fn for_each_chunk(&self, mut f: impl FnMut(usize, &[f32]) -> Result<()>) -> Result<()> {
        let n = self.numel();
        let mut off = 0;
        while off < n {
            let len = CHUNK.min(n - off);
            if self.dtype == DType::F32 {
                // Native bytes are the fastest read (one copy); view them as f32.
                let b = self.read_bytes(off, len)?;
                // SAFETY: any 4 bytes are a valid f32; `align_to` handles alignment.
                let (head, body, tail) = unsafe { b.align_to::<f32>() };
                if head.is_empty() && tail.is_empty() {
                    f(off, body)?;
                } else {
                    let v: Vec<f32> = b
                        .chunks_exact(4)
                        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                        .collect();
                    f(off, &v)?;
                }
            } else {
                let v = self.read(off, len)?;
                f(off, &v)?;
            }
            off += len;
        }
        Ok(())
    }

    /// Overwrite elements starting at `offset`.
    pub fn write(&mut self, offset: usize, values: &[f32]) -> Result<()> {
        if self.dtype == DType::F32 {
            // Same bytes, faster path (the host copies them once, in place).
            // SAFETY: f32 has no padding; the byte view covers exactly `values`.
            let bytes = unsafe {
                std::slice::from_raw_parts(
                    values.as_ptr() as *const u8,
                    std::mem::size_of_val(values),
                )
            };
            return self.write_bytes(offset, bytes);
        }
        Ok(self.raw.write(offset as u64, values)?)
    }
    /// Overwrite elements starting at `offset` with native-dtype bytes.
    pub fn write_bytes(&mut self, offset: usize, bytes: &[u8]) -> Result<()> {
        Ok(self.raw.write_bytes(offset as u64, bytes)?)
    }
    /// Overwrite a slice with `values` (row-major over the slice).
    pub fn write_slice(&mut self, s: &Slice, values: &[f32]) -> Result<()> {
        Ok(self.raw.write_slice(&s.wit(), values)?)
    }
    /// Set a slice to `value`.
    pub fn fill(&mut self, s: &Slice, value: f32) -> Result<()> {
        Ok(self.raw.fill(&s.wit(), value)?)
    }
    /// Set a slice to zero.
    pub fn zero(&mut self, s: &Slice) -> Result<()> {
        self.fill(s, 0.0)
    }
    /// Multiply a slice by `factor`.
    pub fn scale(&mut self, s: &Slice, factor: f32) -> Result<()> {
        Ok(self.raw.scale(&s.wit(), factor)?)
    }
    /// Add `alpha * v` to every row (last dimension) of a slice.
    pub fn add_vector(&mut self, s: &Slice, v: &[f32], alpha: f32) -> Result<()> {
        Ok(self.raw.add_vector(&s.wit(), v, alpha)?)
    }
    /// Emit a slice of this activation into the output dictionary without
    /// copying it through the plugin (`name` empty: the hook point's name).
    pub fn emit(&self, name: &str, s: &Slice) -> Result<()> {
        Ok(wout::emit_activation(name, self.raw, &s.wit())?)
    }
    /// Emit only the batch's real tokens (WIT 0.1.2 `tokens.emit-real`): `s`
    /// applies to each row's real tokens as to a batch of one (`[.., -1]`:
    /// each row's last real token); the result is `[tokens, ...]`. Fails at
    /// a point without a token dimension ([`crate::Context::token_dim`]).
    pub fn emit_real(&self, name: &str, s: &Slice) -> Result<()> {
        Ok(crate::__private::flexmodel::hook::tokens::emit_real(
            name,
            self.raw,
            &s.wit(),
        )?)
    }
}

/// Emit an f32 tensor into the output dictionary.
pub fn emit(name: &str, shape: &[usize], values: &[f32]) -> Result<()> {
    let shape: Vec<u64> = shape.iter().map(|&d| d as u64).collect();
    Ok(wout::emit(name, &shape, values)?)
}

/// Emit raw bytes of `dtype` into the output dictionary.
pub fn emit_bytes(name: &str, shape: &[usize], dtype: DType, bytes: &[u8]) -> Result<()> {
    let shape: Vec<u64> = shape.iter().map(|&d| d as u64).collect();
    Ok(wout::emit_bytes(name, &shape, dtype.into(), bytes)?)
}
