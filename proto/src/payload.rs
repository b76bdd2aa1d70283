//! Message bytes a node retains for repair and hands out in `Deliver` events.
//!
//! Each stream appends the messages it retains to chunks of its own (an [`Arena`]), and a
//! retention slot records only where its message lies ([`Stored`]: chunk, offset,
//! length). Storing a message is one copy to the next bytes of the stream's newest chunk;
//! reading and evicting it touch no reference count. (A pooled reference-counted buffer per
//! message cost a locked instruction on a cold line at each store and eviction, which also
//! waits for the copy's own stores: about a tenth of a shard's time at 3-4 M msg/s.) A
//! chunk is let go once the stream's window starts past every message in it, and reused
//! once no delivery event shares it (an event's [`Payload`] is a slice of the chunk, or a
//! copy of a message up to 64 bytes). Chunks of a stream grow while it fills them within a gossip round and shrink when
//! it does not, so a quiet stream holds a small one. Messages larger than the largest chunk
//! get a buffer of their own, pooled by size class. At steady state storing, delivering and
//! evicting messages allocates nothing.

use std::collections::VecDeque;
use std::fmt;
use std::ops::Deref;
use tutti_wire::chunk::{ChunkSlice, ChunkWriter, Retired};

/// Smallest chunk (bytes).
const MIN_CHUNK: usize = 1 << 10;
/// Chunk classes: `MIN_CHUNK << c` bytes for `c < CHUNK_CLASSES` (1 KiB to 64 KiB).
const CHUNK_CLASSES: usize = 7;
const MAX_CHUNK: usize = MIN_CHUNK << (CHUNK_CLASSES - 1);
/// Free buffers of messages larger than a chunk kept for reuse (bytes).
const MAX_POOLED_LARGE: usize = 16 << 20;
/// Retired chunks looked at for one that is free, per chunk needed.
const REUSE_SCAN: usize = 4;
/// Default bound of the bytes in retired chunks (let go by their streams: free, or still
/// shared with a delivery event): at steady state a stream takes chunks back about as fast
/// as it lets them go, and what a burst left over beyond this is freed.
const DEFAULT_RETIRED_CAP: usize = 16 << 20;

/// Messages up to this many bytes are handed out in the `Payload` itself.
const INLINE: usize = 64;

/// A message's bytes: up to `INLINE` bytes in the value itself (a copy of a cache line
/// from a warm chunk costs less than the two locked instructions a shared reference takes
/// and gives back, which wait for the stores before them), larger ones a slice of a shared
/// chunk. Cloning allocates nothing.
#[derive(Clone)]
pub struct Payload(Repr);

#[derive(Clone)]
enum Repr {
    Inline { len: u8, bytes: [u8; INLINE] },
    Shared(ChunkSlice),
}

impl Payload {
    /// A payload of its own (not pooled), for tests and tools.
    pub fn copy_of(bytes: &[u8]) -> Self {
        Payload::inline(bytes).unwrap_or_else(|| Payload(Repr::Shared(ChunkSlice::copy_of(bytes))))
    }

    fn inline(from: &[u8]) -> Option<Self> {
        let mut bytes = [0; INLINE];
        bytes.get_mut(..from.len())?.copy_from_slice(from);
        Some(Payload(Repr::Inline {
            len: from.len() as u8,
            bytes,
        }))
    }
}

impl Deref for Payload {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match &self.0 {
            Repr::Inline { len, bytes } => bytes.get(..usize::from(*len)).unwrap_or(&[]),
            Repr::Shared(slice) => slice,
        }
    }
}

impl AsRef<[u8]> for Payload {
    fn as_ref(&self) -> &[u8] {
        self
    }
}

impl PartialEq for Payload {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}
impl Eq for Payload {}

impl fmt::Debug for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self, f)
    }
}

/// Where a retained message's bytes are: a chunk of its stream's [`Arena`] and the range
/// in it. Plain numbers: retaining, reading and evicting a message takes no reference
/// count (a locked instruction that waits for the store buffer, where the copy to a chunk
/// line not yet cached sits).
///
/// The range is one `u64` (`at | len << 32`), written and read whole: as two `u32`s the
/// compiler stored them apart and read them back as one 8-byte load, which the store
/// buffer cannot forward from two stores (it waited for every older store, the message's
/// copy into a cold arena line among them: `perf annotate`, ~14% of the sending daemon's
/// submit).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stored {
    span: u64,
    chunk: u32,
}

impl Stored {
    #[inline(always)]
    fn new(chunk: u32, at: u32, len: u32) -> Stored {
        Stored {
            span: u64::from(at) | u64::from(len) << 32,
            chunk,
        }
    }

    #[inline(always)]
    fn at(&self) -> u32 {
        self.span as u32
    }

    #[inline(always)]
    fn len32(&self) -> u32 {
        (self.span >> 32) as u32
    }

    #[inline(always)]
    pub fn len(&self) -> usize {
        self.len32() as usize
    }
}

/// A stream's retained bytes: its chunks, oldest first, each with the highest seq stored
/// in it. A chunk is let go once the stream's window starts past that seq (so no slot can
/// refer to it any more); the newest takes the next messages.
#[derive(Default)]
pub struct Arena {
    chunks: VecDeque<(ChunkWriter, u64)>,
    /// Id of `chunks[0]` (ids count up, wrapping).
    first: u32,
    /// Class of the next chunk (see `CHUNK_CLASSES`).
    class: u8,
    /// Gossip round the newest chunk was started in.
    started: u32,
}

impl Arena {
    /// Id of the newest chunk (of the one a push makes newest, once pushed).
    fn newest(&self) -> u32 {
        self.first.wrapping_add(self.chunks.len() as u32).wrapping_sub(1)
    }

    fn chunk(&self, id: u32) -> Option<&ChunkWriter> {
        self.chunks
            .get(id.wrapping_sub(self.first) as usize)
            .map(|(c, _)| c)
    }

    /// A retained message's bytes (empty if `s` is not of this arena: not reached).
    pub fn bytes(&self, s: Stored) -> &[u8] {
        self.chunk(s.chunk).map_or(&[], |c| c.get(s.at(), s.len32()))
    }

    /// A retained message's bytes as a payload of their own, for a delivery event.
    pub fn share(&self, s: Stored) -> Payload {
        let Some(chunk) = self.chunk(s.chunk) else {
            return Payload::copy_of(&[]); // `s` is of this arena: not reached
        };
        if let Some(p) = Payload::inline(chunk.get(s.at(), s.len32())) {
            return p;
        }
        match chunk.share(s.at(), s.len32()) {
            Some(slice) => Payload(Repr::Shared(slice)),
            None => Payload::copy_of(&[]), // written: not reached
        }
    }

    /// Bytes of the chunks held (retained messages and the newest chunk's slack).
    #[cfg(test)]
    fn held_bytes(&self) -> usize {
        self.chunks.iter().map(|(c, _)| c.capacity()).sum()
    }
}

/// Chunks that streams let go (reused once free), and free buffers of large messages.
pub struct PayloadPool {
    /// `retired[c]`: chunks of `MIN_CHUNK << c` bytes, in the order they were retired; some
    /// are still shared with delivery events.
    retired: [VecDeque<Retired>; CHUNK_CLASSES],
    retired_bytes: usize,
    /// Bound of `retired_bytes`: past it the oldest retired chunks are let go (freed when
    /// their last event is).
    retired_cap: usize,
    /// `large[c]`: buffers of `MAX_CHUNK << (c + 1)` bytes.
    large: Vec<Vec<Retired>>,
    large_bytes: usize,
    /// Buffers allocated because none could be reused (a warm-up measure).
    pub allocated: u64,
}

impl Default for PayloadPool {
    fn default() -> Self {
        PayloadPool::new(DEFAULT_RETIRED_CAP)
    }
}

/// The chunk class that holds `len` bytes (`len <= MAX_CHUNK`).
fn chunk_class(len: usize) -> usize {
    let size = len.max(MIN_CHUNK).next_power_of_two();
    (size.trailing_zeros() - MIN_CHUNK.trailing_zeros()) as usize
}

/// Size class of a message larger than a chunk: index and bytes.
fn large_class(len: usize) -> (usize, usize) {
    let size = len.next_power_of_two();
    (
        (size.trailing_zeros() - MAX_CHUNK.trailing_zeros()) as usize - 1,
        size,
    )
}

impl PayloadPool {
    /// A pool whose retired chunks stay under `retired_cap` bytes (the default: 16 MiB).
    pub fn new(retired_cap: usize) -> Self {
        PayloadPool {
            retired: Default::default(),
            retired_bytes: 0,
            retired_cap,
            large: Vec::new(),
            large_bytes: 0,
            allocated: 0,
        }
    }

    /// Retains `bytes`, message `seq` of the stream: one copy to the arena's newest chunk
    /// (an allocation only when a new chunk is needed and no retired one is free).
    /// `round`: the current gossip round, which sizes the stream's chunks.
    ///
    /// Inlined: most messages fit the newest chunk; [`Self::store_new_chunk`] takes the
    /// others.
    #[inline]
    pub fn store(&mut self, arena: &mut Arena, bytes: &[u8], seq: u64, round: u32) -> Stored {
        let newest = arena.newest();
        if let Some((chunk, high)) = arena.chunks.back_mut() {
            if let Some(at) = chunk.push(bytes) {
                *high = (*high).max(seq);
                return Stored::new(newest, at, bytes.len() as u32);
            }
        }
        self.store_new_chunk(arena, bytes, seq, round)
    }

    /// [`Self::store`] when the message does not fit the arena's newest chunk (or there is
    /// none): it goes to a new one.
    fn store_new_chunk(&mut self, arena: &mut Arena, bytes: &[u8], seq: u64, round: u32) -> Stored {
        let len = bytes.len() as u32;
        if !arena.chunks.is_empty() {
            // Filled within a round: the stream is busy, give it more room per chunk;
            // slower than one chunk in two rounds: less.
            let age = round.wrapping_sub(arena.started);
            if age == 0 {
                arena.class = (usize::from(arena.class) + 1).min(CHUNK_CLASSES - 1) as u8;
            } else if age > 1 {
                arena.class = arena.class.saturating_sub(1);
            }
        }
        let mut chunk = if bytes.len() > MAX_CHUNK {
            self.take_large(bytes.len())
        } else {
            self.take_chunk(usize::from(arena.class).max(chunk_class(bytes.len())))
        };
        arena.started = round;
        // A new chunk holds the message (its class holds the length).
        let at = chunk.push(bytes).unwrap_or(0);
        arena.chunks.push_back((chunk, seq));
        Stored::new(arena.newest(), at, len)
    }

    /// Lets go of the arena's chunks holding only messages below `base` (the stream's
    /// window starts there: no slot refers to them).
    pub fn release(&mut self, arena: &mut Arena, base: u64) {
        while arena.chunks.front().is_some_and(|&(_, high)| high < base) {
            if let Some((chunk, _)) = arena.chunks.pop_front() {
                arena.first = arena.first.wrapping_add(1);
                self.retire(chunk.retire());
            }
        }
    }

    /// Lets go of all of an arena's chunks (its stream is forgotten).
    pub fn release_all(&mut self, arena: &mut Arena) {
        while let Some((chunk, _)) = arena.chunks.pop_front() {
            arena.first = arena.first.wrapping_add(1);
            self.retire(chunk.retire());
        }
    }

    /// A chunk of class `class`: a free retired one, else a new one.
    fn take_chunk(&mut self, class: usize) -> ChunkWriter {
        let size = MIN_CHUNK << class;
        let queue = &mut self.retired[class];
        for _ in 0..REUSE_SCAN.min(queue.len()) {
            let Some(c) = queue.pop_front() else { break };
            match c.reuse() {
                Ok(w) => {
                    self.retired_bytes -= size;
                    return w;
                }
                // Still shared with an event: look again when it comes round.
                Err(c) => queue.push_back(c),
            }
        }
        self.allocated += 1;
        ChunkWriter::new(size)
    }

    fn take_large(&mut self, len: usize) -> ChunkWriter {
        let (class, size) = large_class(len);
        while let Some(b) = self.large.get_mut(class).and_then(Vec::pop) {
            self.large_bytes -= size;
            if let Ok(w) = b.reuse() {
                return w;
            }
        }
        self.allocated += 1;
        ChunkWriter::new(size)
    }

    fn retire(&mut self, chunk: Retired) {
        let size = chunk.capacity();
        if size > MAX_CHUNK {
            self.keep_large(chunk);
            return;
        }
        let class = chunk_class(size);
        if size != MIN_CHUNK << class {
            return; // not one of ours
        }
        self.retired_bytes += size;
        self.retired[class].push_back(chunk);
        let mut class = 0;
        while self.retired_bytes > self.retired_cap && class < CHUNK_CLASSES {
            match self.retired[class].pop_front() {
                Some(c) => self.retired_bytes -= c.capacity(),
                None => class += 1,
            }
        }
    }

    /// Keeps a large buffer for reuse if nobody else holds it (`shared` is a plain load,
    /// not `reuse`'s locked compare-exchange; `take_large` checks with `reuse`) and the
    /// pool has room.
    fn keep_large(&mut self, buf: Retired) {
        let size = buf.capacity();
        if buf.shared() || !size.is_power_of_two() || self.large_bytes + size > MAX_POOLED_LARGE {
            return;
        }
        let (class, _) = large_class(size);
        if self.large.len() <= class {
            self.large.resize_with(class + 1, Vec::new);
        }
        self.large_bytes += size;
        self.large[class].push(buf);
    }

    /// Takes back a delivered payload: a large message's buffer is kept for reuse when
    /// this was its last holder; a chunk's reference is dropped (the chunk is reused once
    /// its stream let it go and no event holds it).
    pub fn recycle(&mut self, p: Payload) {
        if let Repr::Shared(slice) = p.0 {
            if slice.chunk_capacity() > MAX_CHUNK {
                if let Some(buf) = slice.into_retired() {
                    self.keep_large(buf);
                }
            }
        }
    }

    /// Bytes in retired chunks and free large buffers.
    #[cfg(test)]
    pub fn pooled_bytes(&self) -> usize {
        self.retired_bytes + self.large_bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_streams_messages_share_a_chunk_let_go_once_the_window_passes_it() {
        let mut pool = PayloadPool::default();
        let mut arena = Arena::default();
        let first: Vec<Stored> = (0..8u8)
            .map(|i| pool.store(&mut arena, &[i; 128], u64::from(i), 0))
            .collect();
        assert_eq!(pool.allocated, 1, "8 x 128 B fill one 1 KiB chunk");
        for (i, s) in first.iter().enumerate() {
            assert_eq!(arena.bytes(*s), &[i as u8; 128]);
        }
        let event = arena.share(first[3]);
        // The next message opens a chunk (filled within the round: the next class).
        let next = pool.store(&mut arena, b"next", 8, 0);
        assert_eq!(pool.allocated, 2);
        assert_eq!(arena.held_bytes(), 3 * MIN_CHUNK);
        let small = arena.share(next);
        pool.release(&mut arena, 7);
        assert_eq!(arena.held_bytes(), 3 * MIN_CHUNK, "seq 7 is in the first chunk");
        pool.release(&mut arena, 8);
        assert_eq!(arena.held_bytes(), 2 * MIN_CHUNK);
        assert_eq!(pool.pooled_bytes(), MIN_CHUNK);
        assert_eq!(arena.bytes(next), b"next");
        assert_eq!(arena.bytes(first[0]), b"", "let go");
        // Another stream, rounds later, starts at the first class, whose retired chunk is
        // free once the event is dropped.
        let mut other = Arena::default();
        let _ = pool.store(&mut other, &[7; 33], 0, 5);
        assert_eq!(pool.allocated, 3, "the event holds the retired chunk");
        assert_eq!(&*event, &[3; 128]);
        drop(event);
        let mut third = Arena::default();
        let s = pool.store(&mut third, &[8; 33], 0, 9);
        assert_eq!(pool.allocated, 3, "reused");
        assert_eq!(third.bytes(s), &[8; 33]);
        // A small message's event is a copy: it holds no chunk.
        pool.release(&mut arena, 9);
        let mut fourth = Arena::default();
        let _ = pool.store(&mut fourth, &[9; 2000], 0, 20);
        assert_eq!(pool.allocated, 3, "the second chunk was free despite `small`");
        assert_eq!(&*small, b"next");
    }

    #[test]
    fn large_messages_have_buffers_of_their_own() {
        let mut pool = PayloadPool::default();
        let mut arena = Arena::default();
        let big = pool.store(&mut arena, &vec![9; MAX_CHUNK + 1], 0, 0);
        assert_eq!(big.len(), MAX_CHUNK + 1);
        let event = arena.share(big);
        pool.release(&mut arena, 1);
        assert_eq!(pool.pooled_bytes(), 0, "shared with an event: not kept");
        pool.recycle(event);
        assert_eq!(pool.pooled_bytes(), 2 * MAX_CHUNK, "kept by its last holder");
        let again = pool.store(&mut arena, &vec![8; 2 * MAX_CHUNK], 1, 0);
        assert_eq!(pool.allocated, 1, "reused");
        assert_eq!(arena.bytes(again), &vec![8; 2 * MAX_CHUNK][..]);
        assert_eq!(Payload::copy_of(arena.bytes(again)), arena.share(again));
        for seq in 2..42 {
            pool.store(&mut arena, &vec![0u8; 1 << 20], seq, 0);
        }
        pool.release_all(&mut arena);
        assert!(pool.pooled_bytes() <= MAX_POOLED_LARGE);
        assert_eq!(arena.held_bytes(), 0);
    }

    #[test]
    fn retired_chunks_are_bounded() {
        let mut pool = PayloadPool::new(64 << 10);
        let mut arena = Arena::default();
        let events: Vec<(Payload, u32)> = (0..10_000u32)
            .map(|i| {
                let s = pool.store(&mut arena, &i.to_le_bytes().repeat(16), u64::from(i), i / 100);
                let e = arena.share(s);
                pool.release(&mut arena, u64::from(i));
                (e, i)
            })
            .collect();
        assert!(pool.pooled_bytes() <= 64 << 10);
        for (e, i) in &events {
            assert_eq!(&**e, &i.to_le_bytes().repeat(16)[..]);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Whatever streams store (in seq order, or repairs below their newest), share with
        /// events and let go, in whatever rounds, every message still in a stream's window
        /// and every event reads the bytes it was made of.
        #[test]
        fn retained_messages_and_events_keep_their_bytes(
            ops in proptest::collection::vec(
                (0..3usize, 0..3000usize, any::<u8>(), 0..4u32, 0..8u64, 0..64usize),
                1..400,
            ),
        ) {
            let mut pool = PayloadPool::new(16 << 10);
            let mut arenas: Vec<Arena> = (0..3).map(|_| Arena::default()).collect();
            // Per stream: next seq, window base, retained (seq, where, bytes).
            type Retained = Vec<(u64, Stored, Vec<u8>)>;
            let mut streams: Vec<(u64, u64, Retained)> = vec![(0, 0, Vec::new()); 3];
            let mut events: Vec<(Payload, Vec<u8>)> = Vec::new();
            let mut round = 0u32;
            for (stream, len, fill, step, slide, which) in ops {
                round += step;
                let len = if fill == 0 { MAX_CHUNK + len } else { len };
                let bytes: Vec<u8> = (0..len).map(|i| fill.wrapping_add(i as u8)).collect();
                let (next, base, held) = &mut streams[stream];
                // A repair fills a seq below the newest now and then.
                let seq = if which % 5 == 0 && *next > *base { *base + (which as u64 % (*next - *base)) } else { *next };
                *next = (*next).max(seq + 1);
                let s = pool.store(&mut arenas[stream], &bytes, seq, round);
                prop_assert_eq!(arenas[stream].bytes(s), &bytes[..]);
                if which % 3 == 0 {
                    events.push((arenas[stream].share(s), bytes.clone()));
                }
                held.push((seq, s, bytes));
                if slide > 5 {
                    *base = (*base + slide).min(*next);
                    let b = *base;
                    held.retain(|(q, _, _)| *q >= b);
                    pool.release(&mut arenas[stream], b);
                }
                if which % 7 == 0 && !events.is_empty() {
                    let (p, _) = events.swap_remove(which % events.len());
                    pool.recycle(p);
                }
                for (i, (_, _, held)) in streams.iter().enumerate() {
                    for (_, s, bytes) in held {
                        prop_assert_eq!(arenas[i].bytes(*s), &bytes[..]);
                    }
                }
                for (p, bytes) in &events {
                    prop_assert_eq!(&**p, &bytes[..]);
                }
            }
        }
    }
}
