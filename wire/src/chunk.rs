//! An append-only byte buffer shared by reference count: one [`ChunkWriter`] appends, and
//! every append returns a [`ChunkSlice`] of the bytes it wrote, which readers share
//! (clone) freely, also across threads. A chunk that is [`Retired`] is written again, from
//! its start, only once no slice of it is left ([`Retired::reuse`]).
//!
//! Soundness rests on two rules the types enforce: the writer writes only at and past its
//! cursor, and every slice lies below it (it was made by an earlier append); a chunk's
//! cursor goes back to 0 only when nothing else holds the chunk (`Arc::get_mut`, which
//! also orders the rewrite after every other holder's last read).

use std::cell::UnsafeCell;
use std::ops::Deref;
use std::sync::Arc;

/// How far past the cursor an append prefetches (bytes).
const PREFETCH_AHEAD: usize = 512;

/// The bytes of a chunk. Cells, because the writer fills them while slices of other parts
/// of the chunk are shared.
struct Cells(Box<[UnsafeCell<u8>]>);

// SAFETY: a byte is written only through the unique `ChunkWriter` (or a unique `Retired`
// being turned into one), and only while no `ChunkSlice` covers it (see the module doc).
// Slices handed to another thread reach it through a synchronizing operation (an `Arc`
// clone sent over a channel), which orders the writes they cover before their reads.
unsafe impl Send for Cells {}
// SAFETY: as for `Send`: shared access only reads bytes that are no longer written.
unsafe impl Sync for Cells {}

/// The one writer of a chunk.
pub struct ChunkWriter {
    cells: Arc<Cells>,
    fill: usize,
}

/// Bytes a writer appended: shared, read-only.
#[derive(Clone)]
pub struct ChunkSlice {
    cells: Arc<Cells>,
    at: u32,
    len: u32,
}

/// A chunk its writer gave up: rewritten only once unshared.
pub struct Retired {
    cells: Arc<Cells>,
}

impl ChunkWriter {
    /// A new chunk of `size` bytes (at most `u32::MAX`).
    pub fn new(size: usize) -> Self {
        let size = size.min(u32::MAX as usize);
        ChunkWriter {
            cells: Arc::new(Cells(
                std::iter::repeat_with(|| UnsafeCell::new(0)).take(size).collect(),
            )),
            fill: 0,
        }
    }

    /// The chunk's size.
    pub fn capacity(&self) -> usize {
        self.cells.0.len()
    }

    /// Bytes not yet written.
    pub fn room(&self) -> usize {
        self.capacity() - self.fill
    }

    /// Copies `bytes` to the next bytes of the chunk and returns them as a slice; `None`
    /// (nothing written) when they do not fit.
    pub fn append(&mut self, bytes: &[u8]) -> Option<ChunkSlice> {
        let at = self.push(bytes)?;
        self.share(at, bytes.len() as u32)
    }

    /// Bytes `at..at + len` written before (empty when not all written yet). The borrow
    /// of the writer keeps it from appending meanwhile.
    pub fn get(&self, at: u32, len: u32) -> &[u8] {
        let (at, len) = (at as usize, len as usize);
        match at.checked_add(len) {
            Some(end) if end <= self.fill => read(&self.cells, at, len),
            _ => &[],
        }
    }

    /// Bytes `at..at + len` written before, as a slice of their own; `None` when not all
    /// written yet.
    pub fn share(&self, at: u32, len: u32) -> Option<ChunkSlice> {
        let end = (at as usize).checked_add(len as usize)?;
        (end <= self.fill).then(|| ChunkSlice {
            cells: Arc::clone(&self.cells),
            at,
            len,
        })
    }

    /// Copies `bytes` to the next bytes of the chunk and returns where they start; `None`
    /// (nothing written) when they do not fit. No reference count is taken.
    pub fn push(&mut self, bytes: &[u8]) -> Option<u32> {
        let end = self.fill.checked_add(bytes.len())?;
        let cells = self.cells.0.get(self.fill..end)?;
        // SAFETY: `UnsafeCell<u8>` has the layout of `u8` and `cells` is `bytes.len()` of
        // them. No reference to them exists: every slice lies below `fill`, and this
        // writer is their only writer (`&mut self`). `bytes` cannot overlap them: it is a
        // shared borrow, and the only shared views of a chunk are slices below `fill`.
        unsafe {
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), UnsafeCell::raw_get(cells.as_ptr()), bytes.len());
        }
        let at = self.fill as u32;
        self.fill = end;
        self.prefetch(end + PREFETCH_AHEAD);
        Some(at)
    }

    /// Hints the CPU to fetch the line at `off` if it is in the chunk: a chunk is written
    /// long after its lines were last touched (a reused one held messages evicted long
    /// ago), and fetching ahead keeps an append from waiting for its line.
    #[inline(always)]
    fn prefetch(&self, off: usize) {
        if let Some(cell) = self.cells.0.get(off) {
            crate::prefetch(cell.get().cast_const());
        }
    }

    /// Gives the chunk up: no more appends until it is reused.
    pub fn retire(self) -> Retired {
        Retired { cells: self.cells }
    }
}

impl Retired {
    /// The chunk's size.
    pub fn capacity(&self) -> usize {
        self.cells.0.len()
    }

    /// Whether a slice of it may still exist (a plain load: no `Weak` of a chunk exists,
    /// so a count of 1 is this handle alone, and nobody can raise it).
    pub fn shared(&self) -> bool {
        Arc::strong_count(&self.cells) != 1
    }

    /// A writer from the chunk's start, if no slice of it is left; else the chunk back.
    pub fn reuse(mut self) -> Result<ChunkWriter, Retired> {
        if Arc::get_mut(&mut self.cells).is_some() {
            Ok(ChunkWriter {
                cells: self.cells,
                fill: 0,
            })
        } else {
            Err(self)
        }
    }
}

impl ChunkSlice {
    /// A slice in a chunk of its own.
    pub fn copy_of(bytes: &[u8]) -> Self {
        let mut w = ChunkWriter::new(bytes.len());
        match w.append(bytes) {
            Some(s) => s,
            // Sized for them; only a length past `u32::MAX` does not fit.
            None => ChunkSlice {
                cells: w.cells,
                at: 0,
                len: 0,
            },
        }
    }

    /// The whole chunk this slice is in, as retired (for a pool to reuse once unshared);
    /// `None` unless the slice starts the chunk.
    pub fn into_retired(self) -> Option<Retired> {
        (self.at == 0).then_some(Retired { cells: self.cells })
    }

    /// Size of the chunk this slice is in.
    pub fn chunk_capacity(&self) -> usize {
        self.cells.0.len()
    }
}

impl Deref for ChunkSlice {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        read(&self.cells, self.at as usize, self.len as usize)
    }
}

/// Bytes `at..at + len` of a chunk, which the caller guarantees were written and are not
/// written while the result lives: they lie below the writer's cursor, and the result
/// borrows a slice of the chunk (a reuse needs it unshared) or the writer itself (an
/// append needs it exclusively).
fn read(cells: &Cells, at: usize, len: usize) -> &[u8] {
    let Some(cells) = at.checked_add(len).and_then(|end| cells.0.get(at..end)) else {
        return &[];
    };
    // SAFETY: same layout as `u8`; written and not written again while borrowed (above).
    unsafe { std::slice::from_raw_parts(UnsafeCell::raw_get(cells.as_ptr()).cast_const(), len) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appends_are_read_back_and_a_chunk_is_reused_only_unshared() {
        let mut w = ChunkWriter::new(100);
        let a = w.append(b"hello").unwrap();
        let b = w.append(&[7; 95]).unwrap();
        assert!(w.append(b"x").is_none(), "full");
        assert_eq!(w.room(), 0);
        assert_eq!(&*a, b"hello");
        assert_eq!(&*b, &[7; 95]);
        let r = w.retire();
        assert!(r.shared());
        let r = r.reuse().err().expect("slices left: not reusable");
        let t = std::thread::spawn(move || b.to_vec()).join().unwrap();
        assert_eq!(t, [7; 95]);
        drop(a);
        assert!(!r.shared());
        let mut w = r.reuse().ok().expect("unshared");
        assert_eq!(w.room(), 100);
        assert_eq!(&*w.append(b"again").unwrap(), b"again");
        assert_eq!(&*ChunkSlice::copy_of(b"own"), b"own");
        let at = w.push(b"pushed").unwrap();
        assert_eq!(w.get(at, 6), b"pushed");
        assert_eq!(w.get(at, 7), b"", "not written yet");
        assert!(w.share(at, 7).is_none());
        assert_eq!(&*w.share(at, 6).unwrap(), b"pushed");
        assert_eq!(w.room(), 100 - 11);
        assert!(ChunkSlice::copy_of(b"own").into_retired().is_some());
    }
}
