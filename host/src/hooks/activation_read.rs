//! Reads of an [`ActivationBuf`]: ranged and strided, as f32 or native
//! bytes (the write side and the transaction are in `activation.rs`).

use half::{bf16, f16};

use super::activation::{AResult, ActivationBuf, DType};
use super::slice::DimRange;

impl ActivationBuf {
    /// Raw native-dtype bytes of elements `[offset, offset+len)`.
    pub fn read_bytes(&self, offset: u64, len: u64) -> AResult<Vec<u8>> {
        let (off, n) = self.check_range(offset, len)?;
        let es = self.dtype.size();
        Ok(self.bytes()[off * es..(off + n) * es].to_vec())
    }

    /// Pointer to and length of the native bytes of elements
    /// `[offset, offset+len)`, valid until the buffer is next written or dropped.
    pub(crate) fn raw_bytes(&self, offset: u64, len: u64) -> AResult<(*const u8, usize)> {
        let (off, n) = self.check_range(offset, len)?;
        let es = self.dtype.size();
        // SAFETY: in bounds (checked above).
        Ok((unsafe { self.src.add(off * es) } as *const u8, n * es))
    }

    /// Elements `[offset, offset+len)` as f32.
    pub fn read_f32(&self, offset: u64, len: u64) -> AResult<Vec<f32>> {
        let (off, n) = self.check_range(offset, len)?;
        let mut out = Vec::with_capacity(n);
        self.extend_f32(off, n, 1, &mut out);
        Ok(out)
    }

    /// A strided slice as f32, row-major over the slice.
    pub fn read_slice(&self, s: &[DimRange]) -> AResult<Vec<f32>> {
        let r = self.resolve(s)?;
        let mut out = Vec::with_capacity(r.numel());
        r.for_each_row::<()>(|off, n, st| {
            self.extend_f32(off, n, st, &mut out);
            Ok(())
        })
        .ok();
        Ok(out)
    }

    pub(super) fn extend_f32(&self, off: usize, n: usize, stride: usize, out: &mut Vec<f32>) {
        let b = self.bytes();
        match self.dtype {
            DType::F32 if stride == 1 => {
                let src = &b[off * 4..(off + n) * 4];
                let start = out.len();
                out.resize(start + n, 0.0);
                // SAFETY: same length, f32 has no invalid bit patterns.
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        src.as_ptr(),
                        out.as_mut_ptr().add(start) as *mut u8,
                        n * 4,
                    )
                };
            }
            _ => out.extend((0..n).map(|i| self.load(off + i * stride))),
        }
    }

    pub(super) fn load(&self, idx: usize) -> f32 {
        let b = self.bytes();
        match self.dtype {
            DType::F32 => {
                f32::from_le_bytes([b[idx * 4], b[idx * 4 + 1], b[idx * 4 + 2], b[idx * 4 + 3]])
            }
            DType::F16 => f16::from_le_bytes([b[idx * 2], b[idx * 2 + 1]]).to_f32(),
            DType::BF16 => bf16::from_le_bytes([b[idx * 2], b[idx * 2 + 1]]).to_f32(),
        }
    }
}
