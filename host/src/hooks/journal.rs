//! The undo journal of in-place edits: the previous contents of every
//! overwritten block of an activation, saved once per call (so it never
//! holds more than the activation), written with non-temporal stores when
//! the activation is too large to stay in cache, replayed on rollback.

/// Saves at least this large, of activations at least `STREAM_TENSOR_MIN`
/// bytes, use non-temporal stores (smaller ones stay in cache).
const STREAM_MIN: usize = 16 * 1024;
pub(crate) const STREAM_TENSOR_MIN: usize = 8 << 20;

/// Copy `n` bytes from `src` to `dst` (non-overlapping), with non-temporal
/// stores where the CPU has them.
///
/// # Safety
/// `src` must be valid for `n` reads and `dst` for `n` writes; no overlap.
unsafe fn stream_copy(src: *const u8, dst: *mut u8, n: usize) {
    #[cfg(target_arch = "x86_64")]
    unsafe {
        use std::arch::x86_64::{__m128i, _mm_loadu_si128, _mm_sfence, _mm_stream_si128};
        // Unaligned head with a plain copy, then 16-byte aligned streaming stores.
        let head = dst.align_offset(16).min(n);
        std::ptr::copy_nonoverlapping(src, dst, head);
        let body = (n - head) / 64 * 64;
        let (mut s, mut d) = (src.add(head), dst.add(head));
        let end = d.add(body);
        while d < end {
            let a = _mm_loadu_si128(s as *const __m128i);
            let b = _mm_loadu_si128(s.add(16) as *const __m128i);
            let c = _mm_loadu_si128(s.add(32) as *const __m128i);
            let e = _mm_loadu_si128(s.add(48) as *const __m128i);
            _mm_stream_si128(d as *mut __m128i, a);
            _mm_stream_si128(d.add(16) as *mut __m128i, b);
            _mm_stream_si128(d.add(32) as *mut __m128i, c);
            _mm_stream_si128(d.add(48) as *mut __m128i, e);
            s = s.add(64);
            d = d.add(64);
        }
        _mm_sfence();
        std::ptr::copy_nonoverlapping(s, d, n - head - body);
    }
    #[cfg(not(target_arch = "x86_64"))]
    unsafe {
        std::ptr::copy_nonoverlapping(src, dst, n);
    }
}

/// Granularity of the undo journal: each block of the activation is saved at
/// most once per call, so the journal never holds more than the activation
/// (plus one block), however often a plugin rewrites the same elements.
pub const JOURNAL_BLOCK: usize = 4096;

/// Undo journal: saved byte ranges in one arena, reused across calls so that
/// large edits do not page-fault fresh memory every call.
#[derive(Default)]
pub struct Journal {
    pub(crate) arena: Vec<u8>,
    /// (byte offset in the activation, start in the arena, length).
    ranges: Vec<(usize, usize, usize)>,
    /// One bit per [`JOURNAL_BLOCK`] of the activation: already saved.
    saved: Vec<u64>,
}

impl Journal {
    pub(crate) fn clear(&mut self) {
        self.arena.clear();
        self.ranges.clear();
        // Do not hold on to more than 256 MiB between calls.
        if self.arena.capacity() > 256 << 20 {
            self.arena = Vec::new();
        }
    }

    /// Start a call on an activation of `total` bytes.
    pub(crate) fn begin(&mut self, total: usize) {
        let words = total.div_ceil(JOURNAL_BLOCK).div_ceil(64);
        self.saved.clear();
        self.saved.resize(words, 0);
    }

    fn is_saved(&self, block: usize) -> bool {
        self.saved[block / 64] >> (block % 64) & 1 == 1
    }

    /// Bytes held by the journal.
    pub fn len(&self) -> usize {
        self.arena.len()
    }

    pub fn is_empty(&self) -> bool {
        self.arena.is_empty()
    }

    /// Save the blocks of `[start, end)` (bytes of the activation at `base`,
    /// `total` bytes long) that are not saved yet.
    ///
    /// # Safety
    /// `base` must be valid for reads of `total` bytes; `end <= total`.
    pub(crate) unsafe fn save_range(
        &mut self,
        base: *const u8,
        total: usize,
        start: usize,
        end: usize,
        stream: bool,
    ) {
        if end <= start {
            return;
        }
        let last = (end - 1) / JOURNAL_BLOCK;
        let mut b = start / JOURNAL_BLOCK;
        while b <= last {
            if self.is_saved(b) {
                b += 1;
                continue;
            }
            let run = b;
            while b <= last && !self.is_saved(b) {
                self.saved[b / 64] |= 1 << (b % 64);
                b += 1;
            }
            let (s, e) = (run * JOURNAL_BLOCK, (b * JOURNAL_BLOCK).min(total));
            // SAFETY: [s, e) is within the activation (caller's contract).
            let src = unsafe { std::slice::from_raw_parts(base.add(s), e - s) };
            self.save(s, src, stream);
        }
    }

    /// Save `bytes` (previously at `byte_off`). `stream`: the activation is
    /// too large to stay in cache, so bypass the cache for the journal.
    fn save(&mut self, byte_off: usize, bytes: &[u8], stream: bool) {
        self.ranges.push((byte_off, self.arena.len(), bytes.len()));
        if !stream || bytes.len() < STREAM_MIN {
            self.arena.extend_from_slice(bytes);
            return;
        }
        // Large saves: the journal is written once and read back only on
        // rollback, so write it with non-temporal stores (no read-for-ownership
        // of the arena, no eviction of the activation from cache).
        let at = self.arena.len();
        self.arena.reserve(bytes.len());
        // SAFETY: `reserve` made room for `bytes.len()` more bytes; the copy
        // initialises exactly that range before `set_len`.
        unsafe {
            stream_copy(bytes.as_ptr(), self.arena.as_mut_ptr().add(at), bytes.len());
            self.arena.set_len(at + bytes.len());
        }
    }

    /// Saved ranges, most recent first (the order to undo them in).
    pub(crate) fn entries(&self) -> impl Iterator<Item = (usize, &[u8])> {
        self.ranges
            .iter()
            .rev()
            .map(|&(off, at, len)| (off, &self.arena[at..at + len]))
    }
}
