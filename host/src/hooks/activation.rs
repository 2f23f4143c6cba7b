//! The host side of an activation handed to a hook: typed, ranged access to a
//! tch tensor's memory, with an undo journal that makes a call's edits
//! transactional.
//!
//! A CPU tensor that is contiguous is accessed in place; anything else (a
//! strided view, a CUDA tensor) is first copied into a contiguous CPU staging
//! tensor, and written back only when the call commits.

use half::{bf16, f16};
use tch::{Device, Tensor};

pub use super::dtype::DType;
pub use super::hook::EditMode;
pub use super::journal::Journal;
use super::journal::STREAM_TENSOR_MIN;
use super::slice::{self, DimRange, Resolved};

/// What an edit did to the values, for the non-finite policy.
#[derive(Debug, Default, Clone, Copy)]
pub struct EditStats {
    /// Non-finite values (NaN, ±inf) written by this call.
    pub non_finite: u64,
}

/// A rejected access; the message goes back to the plugin as `invalid-argument`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessError(pub String);

impl From<slice::SliceError> for AccessError {
    fn from(e: slice::SliceError) -> Self {
        AccessError(e.0)
    }
}

pub(super) type AResult<T> = Result<T, AccessError>;

/// What a successful call did to the activation.
#[derive(Debug)]
pub enum Committed {
    /// Not written.
    Unchanged,
    /// Edited in place (the caller's tensor holds the result).
    InPlace,
    /// A replacement tensor, same shape, dtype and device as the original.
    Replaced(Tensor),
}

/// Ranged access to one activation during one hook call.
///
/// Reads come from `src`; writes go to `dst`. In place, both are the tensor
/// (or its staging copy) and overwritten bytes are journaled; in replace mode
/// `src` is the untouched original and `dst` a new tensor whose written
/// ranges are tracked, so that a partial replacement is refused.
pub struct ActivationBuf {
    /// The caller's tensor (shares storage with the model's activation).
    target: Tensor,
    /// Contiguous CPU copy when `target` cannot be accessed in place.
    staging: Option<Tensor>,
    /// The replacement being built (replace mode).
    out: Option<Tensor>,
    pub(super) src: *mut u8,
    dst: *mut u8,
    shape: Vec<usize>,
    numel: usize,
    pub(super) dtype: DType,
    mode: EditMode,
    /// Undo journal (in place): previous contents of overwritten byte ranges.
    journal: Journal,
    /// Written element ranges (replace mode).
    covered: Vec<(usize, usize)>,
    dirty: bool,
    check_finite: bool,
    pub stats: EditStats,
    /// Bytes written or transformed since the last [`Self::take_costs`].
    work: u64,
    /// Journal bytes already reported by [`Self::take_costs`].
    journal_reported: usize,
}

// SAFETY: `src`/`dst` point into the storage of tensors owned here (`target`,
// `staging`, `out`); the buffer is only used by the thread running the call.
unsafe impl Send for ActivationBuf {}

impl ActivationBuf {
    /// Wrap `tensor` for one call in the plugin's declared `mode`;
    /// `check_finite` counts non-finite values written. `journal` is a
    /// (reused) undo journal, handed back by `commit`/`rollback`.
    pub fn new(
        tensor: &Tensor,
        mode: EditMode,
        check_finite: bool,
        mut journal: Journal,
    ) -> Result<Self, String> {
        journal.clear();
        let dtype = DType::from_kind(tensor.kind()).ok_or_else(|| {
            format!(
                "dtype {:?} is not supported by hooks (f32, f16, bf16 are)",
                tensor.kind()
            )
        })?;
        let size = tensor.size();
        let shape: Vec<usize> = size.iter().map(|&d| d as usize).collect();
        let numel: usize = shape.iter().product();
        journal.begin(numel * dtype.size());
        let direct = tensor.device() == Device::Cpu && tensor.is_contiguous();
        let (staging, src) = if direct {
            (None, tensor.data_ptr() as *mut u8)
        } else {
            let e = |e: tch::TchError| e.to_string();
            let s = tensor
                .f_to_device(Device::Cpu)
                .and_then(|t| t.f_contiguous())
                .map_err(e)?;
            // Never share storage with the caller's tensor.
            let s = if s.data_ptr() == tensor.data_ptr() {
                let mut c = Tensor::f_empty_like(&s).map_err(e)?;
                c.f_copy_(&s).map_err(e)?;
                c
            } else {
                s
            };
            let p = s.data_ptr() as *mut u8;
            (Some(s), p)
        };
        let (out, dst) = match mode {
            EditMode::Replace => {
                let o = Tensor::f_empty(&size, (dtype.kind(), Device::Cpu))
                    .map_err(|e| e.to_string())?;
                let p = o.data_ptr() as *mut u8;
                (Some(o), p)
            }
            EditMode::InPlace => (None, src),
            EditMode::ReadOnly => (None, std::ptr::null_mut()),
        };
        Ok(ActivationBuf {
            target: tensor.shallow_clone(),
            staging,
            out,
            src,
            dst,
            shape,
            numel,
            dtype,
            mode,
            journal,
            covered: Vec::new(),
            dirty: false,
            check_finite,
            stats: EditStats::default(),
            work: 0,
            journal_reported: 0,
        })
    }

    /// Host work done since the last call (bytes written or transformed) and
    /// bytes the undo journal grew by: what the calling host function is
    /// charged (fuel, and host memory for the journal).
    pub(crate) fn take_costs(&mut self) -> (u64, u64) {
        let work = std::mem::take(&mut self.work);
        let j = self.journal.arena.len();
        let grown = j.saturating_sub(self.journal_reported);
        self.journal_reported = j;
        (work + grown as u64, grown as u64)
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }
    pub fn dtype(&self) -> DType {
        self.dtype
    }
    pub fn numel(&self) -> usize {
        self.numel
    }
    pub fn mode(&self) -> EditMode {
        self.mode
    }
    pub fn writable(&self) -> bool {
        self.mode.writes()
    }
    pub fn is_dirty(&self) -> bool {
        self.dirty
    }

    /// What the hook reads, as a CPU tensor (for host-side copies such as
    /// `emit-activation`).
    pub fn cpu_view(&self) -> Tensor {
        match &self.staging {
            Some(s) => s.shallow_clone(),
            None => self.target.shallow_clone(),
        }
    }

    pub(super) fn nbytes(&self) -> usize {
        self.numel * self.dtype.size()
    }

    pub(super) fn bytes(&self) -> &[u8] {
        if self.numel == 0 {
            return &[];
        }
        // SAFETY: src points at numel * size bytes of initialised storage.
        unsafe { std::slice::from_raw_parts(self.src, self.nbytes()) }
    }

    /// The bytes writes go to. Only called after `check_writable`.
    fn dst_bytes(&mut self) -> &mut [u8] {
        if self.numel == 0 || self.dst.is_null() {
            return &mut [];
        }
        // SAFETY: dst points at numel * size bytes of storage owned here; we
        // hold the only access during the call.
        unsafe { std::slice::from_raw_parts_mut(self.dst, self.nbytes()) }
    }

    pub(super) fn check_range(&self, offset: u64, len: u64) -> AResult<(usize, usize)> {
        let end = offset
            .checked_add(len)
            .filter(|&e| e <= self.numel as u64)
            .ok_or_else(|| {
                AccessError(format!(
                    "range [{offset}, {offset}+{len}) is out of bounds for a tensor of {} elements",
                    self.numel
                ))
            })?;
        Ok((offset as usize, (end - offset) as usize))
    }

    fn check_writable(&self) -> AResult<()> {
        if self.mode.writes() {
            Ok(())
        } else {
            Err(AccessError(
                "the activation is read-only: the plugin declared edit mode `read-only` at init"
                    .into(),
            ))
        }
    }

    pub fn resolve(&self, s: &[DimRange]) -> AResult<Resolved> {
        Ok(slice::resolve(&self.shape, s)?)
    }

    // ---- writes ------------------------------------------------------------

    /// Before writing elements `[off, off+n)`: journal them (in place) or
    /// record them as covered (replace).
    fn record_write(&mut self, off: usize, n: usize) {
        self.dirty = true;
        if n == 0 {
            return;
        }
        match self.mode {
            EditMode::InPlace if self.staging.is_none() => {
                let es = self.dtype.size();
                let (start, end) = (off * es, (off + n) * es);
                let stream = self.nbytes() >= STREAM_TENSOR_MIN;
                let total = self.nbytes();
                // SAFETY: [start, end) is in bounds of the activation's
                // `total` bytes (callers check).
                unsafe { self.journal.save_range(self.src, total, start, end, stream) };
            }
            // A staging copy is simply discarded on rollback.
            EditMode::InPlace => {}
            EditMode::Replace => match self.covered.last_mut() {
                Some(last) if last.1 == off => last.1 = off + n,
                _ => self.covered.push((off, off + n)),
            },
            EditMode::ReadOnly => {}
        }
    }

    /// `record_write` for every element of a resolved slice.
    fn record_slice(&mut self, r: &Resolved) {
        if let Some(start) = r.contiguous_block() {
            self.record_write(start, r.numel());
            return;
        }
        let mut rows = Vec::new();
        r.for_each_row::<()>(|off, n, st| {
            rows.push((off, n, st));
            Ok(())
        })
        .ok();
        for (off, n, st) in rows {
            if st == 1 || self.mode == EditMode::InPlace {
                // In place: one journal record spanning the strided row.
                let span = if st == 1 { n } else { (n - 1) * st + 1 };
                self.record_write(off, span);
            } else {
                for i in 0..n {
                    self.record_write(off + i * st, 1);
                }
            }
        }
    }

    fn count_non_finite(&mut self, values: impl Iterator<Item = f32>) {
        if self.check_finite {
            self.stats.non_finite += values.filter(|v| !v.is_finite()).count() as u64;
        }
    }

    fn store(&mut self, idx: usize, v: f32) {
        let dtype = self.dtype;
        let b = self.dst_bytes();
        match dtype {
            DType::F32 => b[idx * 4..idx * 4 + 4].copy_from_slice(&v.to_le_bytes()),
            DType::F16 => b[idx * 2..idx * 2 + 2].copy_from_slice(&f16::from_f32(v).to_le_bytes()),
            DType::BF16 => {
                b[idx * 2..idx * 2 + 2].copy_from_slice(&bf16::from_f32(v).to_le_bytes())
            }
        }
    }

    /// Overwrite elements starting at `offset` with `values`.
    pub fn write_f32(&mut self, offset: u64, values: &[f32]) -> AResult<()> {
        self.check_writable()?;
        let (off, n) = self.check_range(offset, values.len() as u64)?;
        self.work += (n * self.dtype.size()) as u64;
        self.record_write(off, n);
        self.count_non_finite(values.iter().copied());
        if self.dtype == DType::F32 {
            let dst = &mut self.dst_bytes()[off * 4..(off + n) * 4];
            // SAFETY: same length; plain bytes.
            unsafe {
                std::ptr::copy_nonoverlapping(values.as_ptr() as *const u8, dst.as_mut_ptr(), n * 4)
            };
        } else {
            for (i, &v) in values.iter().enumerate() {
                self.store(off + i, v);
            }
        }
        Ok(())
    }

    /// Check and record a write of `nbytes` native bytes at element `offset`;
    /// returns where to copy them. The caller copies the bytes and then
    /// reports non-finite values with [`Self::count_non_finite_bytes`].
    pub(crate) fn prepare_write_bytes(&mut self, offset: u64, nbytes: usize) -> AResult<*mut u8> {
        self.check_writable()?;
        let es = self.dtype.size();
        if !nbytes.is_multiple_of(es) {
            return Err(AccessError(format!(
                "{nbytes} bytes is not a whole number of {:?} elements ({es} bytes each)",
                self.dtype
            )));
        }
        let (off, n) = self.check_range(offset, (nbytes / es) as u64)?;
        self.work += nbytes as u64;
        self.record_write(off, n);
        // SAFETY: in bounds (checked above).
        Ok(unsafe { self.dst.add(off * es) })
    }

    /// Count non-finite values in native-dtype `bytes` just written (when the
    /// policy asks).
    pub(crate) fn count_non_finite_bytes(&mut self, bytes: &[u8]) {
        if !self.check_finite {
            return;
        }
        let n = match self.dtype {
            DType::F32 => bytes
                .chunks_exact(4)
                .filter(|c| !f32::from_le_bytes([c[0], c[1], c[2], c[3]]).is_finite())
                .count(),
            DType::F16 => bytes
                .chunks_exact(2)
                .filter(|c| !f16::from_le_bytes([c[0], c[1]]).is_finite())
                .count(),
            DType::BF16 => bytes
                .chunks_exact(2)
                .filter(|c| !bf16::from_le_bytes([c[0], c[1]]).is_finite())
                .count(),
        };
        self.stats.non_finite += n as u64;
    }

    /// Overwrite elements starting at `offset` with native-dtype bytes.
    pub fn write_bytes(&mut self, offset: u64, bytes: &[u8]) -> AResult<()> {
        let dst = self.prepare_write_bytes(offset, bytes.len())?;
        // SAFETY: `dst` has room for `bytes.len()` bytes (checked); no overlap
        // with a caller-owned slice.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), dst, bytes.len()) };
        self.count_non_finite_bytes(bytes);
        Ok(())
    }

    /// Overwrite a strided slice with `values` (row-major over the slice).
    pub fn write_slice(&mut self, s: &[DimRange], values: &[f32]) -> AResult<()> {
        self.check_writable()?;
        let r = self.resolve(s)?;
        if r.numel() != values.len() {
            return Err(AccessError(format!(
                "slice of shape {:?} has {} elements but {} values were given",
                r.shape(),
                r.numel(),
                values.len()
            )));
        }
        self.work += (r.numel() * self.dtype.size()) as u64;
        self.record_slice(&r);
        self.count_non_finite(values.iter().copied());
        let mut k = 0;
        r.for_each_row::<()>(|off, n, st| {
            for i in 0..n {
                self.store(off + i * st, values[k]);
                k += 1;
            }
            Ok(())
        })
        .ok();
        Ok(())
    }

    /// `dst[i] = f(src[i], index_in_row)` for every element of a slice.
    fn map_slice(&mut self, s: &[DimRange], mut f: impl FnMut(f32, usize) -> f32) -> AResult<()> {
        self.check_writable()?;
        let r = self.resolve(s)?;
        self.work += (r.numel() * self.dtype.size()) as u64;
        self.record_slice(&r);
        let mut non_finite = 0u64;
        let check = self.check_finite;
        if self.dtype == DType::F32
            && (self.src as usize).is_multiple_of(4)
            && (self.dst as usize).is_multiple_of(4)
        {
            // f32 fast path: raw typed pointers (src and dst may be the same).
            let (src, dst) = (self.src as *const f32, self.dst as *mut f32);
            let aliased = std::ptr::eq(src, dst);
            r.for_each_row::<()>(|off, n, st| {
                if st == 1 {
                    // Contiguous row: plain slices, so the loop vectorises.
                    // SAFETY: [off, off+n) is in bounds of both buffers; when
                    // they alias only the mutable slice is formed.
                    let d = unsafe { std::slice::from_raw_parts_mut(dst.add(off), n) };
                    if aliased {
                        for (i, x) in d.iter_mut().enumerate() {
                            *x = f(*x, i);
                        }
                    } else {
                        let s = unsafe { std::slice::from_raw_parts(src.add(off), n) };
                        for (i, (x, &y)) in d.iter_mut().zip(s).enumerate() {
                            *x = f(y, i);
                        }
                    }
                    if check {
                        non_finite += d.iter().filter(|v| !v.is_finite()).count() as u64;
                    }
                    return Ok(());
                }
                for i in 0..n {
                    // SAFETY: off + i * st < numel (resolved slice); both
                    // buffers hold numel aligned f32 values.
                    unsafe {
                        let v = f(*src.add(off + i * st), i);
                        *dst.add(off + i * st) = v;
                        non_finite += u64::from(check && !v.is_finite());
                    }
                }
                Ok(())
            })
            .ok();
        } else {
            r.for_each_row::<()>(|off, n, st| {
                for i in 0..n {
                    let idx = off + i * st;
                    let v = f(self.load(idx), i);
                    non_finite += u64::from(check && !v.is_finite());
                    self.store(idx, v);
                }
                Ok(())
            })
            .ok();
        }
        self.stats.non_finite += non_finite;
        Ok(())
    }

    pub fn fill(&mut self, s: &[DimRange], value: f32) -> AResult<()> {
        self.map_slice(s, move |_, _| value)
    }

    pub fn scale(&mut self, s: &[DimRange], factor: f32) -> AResult<()> {
        self.map_slice(s, move |v, _| v * factor)
    }

    pub fn add_vector(&mut self, s: &[DimRange], v: &[f32], alpha: f32) -> AResult<()> {
        let r = self.resolve(s)?;
        if r.row_len() != v.len() {
            return Err(AccessError(format!(
                "vector has {} elements but the slice's last dimension has {}",
                v.len(),
                r.row_len()
            )));
        }
        self.map_slice(s, move |x, i| x + alpha * v[i])
    }

    // ---- transaction -------------------------------------------------------

    /// Elements a replacement left unwritten.
    fn unwritten(&mut self) -> usize {
        self.covered.sort_unstable();
        let mut covered = 0usize;
        let mut end = 0usize;
        for &(a, b) in &self.covered {
            let a = a.max(end);
            if b > a {
                covered += b - a;
                end = b;
            }
        }
        self.numel - covered
    }

    /// Make the call's edits visible: in place in the caller's tensor, or as a
    /// replacement tensor. A replacement that left elements unwritten is
    /// refused (and nothing changes). Returns the journal for reuse.
    pub fn commit(mut self) -> Result<(Committed, Journal), (AccessError, Journal)> {
        let journal = std::mem::take(&mut self.journal);
        if !self.dirty {
            return Ok((Committed::Unchanged, journal));
        }
        match self.mode {
            EditMode::Replace => {
                let unwritten = self.unwritten();
                if unwritten > 0 {
                    return Err((
                        AccessError(format!(
                            "edit mode `replace` must write every element: {unwritten} of {} were left unwritten",
                            self.numel
                        )),
                        journal,
                    ));
                }
                let Some(out) = self.out.take() else {
                    return Err((
                        AccessError("replace mode without a replacement".into()),
                        journal,
                    ));
                };
                let out = if self.target.device() == Device::Cpu {
                    Ok(out)
                } else {
                    out.f_to_device(self.target.device())
                };
                match out {
                    Ok(out) => Ok((Committed::Replaced(out), journal)),
                    Err(e) => Err((AccessError(e.to_string()), journal)),
                }
            }
            _ => {
                if let Some(s) = self.staging.take()
                    && let Err(e) = self.target.f_copy_(&s)
                {
                    return Err((AccessError(e.to_string()), journal));
                }
                Ok((Committed::InPlace, journal))
            }
        }
    }

    /// Undo every edit made during the call. Returns the journal for reuse.
    pub fn rollback(mut self) -> Journal {
        let journal = std::mem::take(&mut self.journal);
        if self.mode == EditMode::InPlace && self.staging.is_none() {
            let total = self.nbytes();
            for (byte_off, saved) in journal.entries() {
                debug_assert!(byte_off + saved.len() <= total);
                // SAFETY: the journal only holds ranges of this activation.
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        saved.as_ptr(),
                        self.src.add(byte_off),
                        saved.len(),
                    )
                };
            }
        }
        journal
    }
}
