//! Packs outgoing messages per destination into datagrams (many small messages share one;
//! a sender's consecutive messages share one run header) and queues finished datagrams for
//! `poll_transmit`, bounded. Datagram buffers come from a pool and go back to it once the
//! driver has taken the bytes, so sending allocates nothing at steady state.
//!
//! A drain hands out a destination's datagrams together (destinations in the order their
//! first datagram was finished, each destination's in the order they were finished): a
//! transport with segmentation offload sends a destination's consecutive datagrams of one
//! size as one packet, and a node that disseminates to several members alternates between
//! them datagram by datagram (payload runs, tree forwarding), which would leave it nothing
//! to coalesce.

use crate::fxhash::FxMap;
use crate::NodeId;
use std::collections::VecDeque;
use tutti_wire::packet::{
    data_len_alone, DataHeader, Encoder, EncoderState, PacketError, DATAGRAM_HEADER_LEN, MESSAGE_HEADER_LEN,
};

/// Free datagram buffers kept for reuse (each `max_datagram` bytes); more are freed.
const MAX_FREE_BUFFERS: usize = 1024;
/// Free buffers `trim` keeps at least (beyond them, as many as the last round used).
const MIN_FREE_BUFFERS: usize = 8;

/// A datagram being filled for `dest`.
struct Open {
    dest: NodeId,
    buf: Vec<u8>,
    state: EncoderState,
}

/// A finished datagram: `buf[..len]`.
struct Ready {
    dest: NodeId,
    buf: Vec<u8>,
    len: usize,
    /// Where it goes in the drain: (rank of its destination, finish order).
    place: (u32, u64),
}

pub struct Outbox {
    from: NodeId,
    incarnation: u32,
    max_datagram: usize,
    max_pending: usize,
    open: Vec<Open>,
    open_index: FxMap<NodeId, usize>,
    /// Where in `open` the last data message went: the next one most often goes to the same
    /// datagram (a sender's stream to its one tree child), found without the lookup. A hint
    /// only, checked by destination: a closed datagram left a hole there that no run
    /// extends, and `flush` empties `open`.
    last_data: usize,
    ready: VecDeque<Ready>,
    /// Buffers of `max_datagram` bytes to reuse.
    free: Vec<Vec<u8>>,
    /// Buffers put to use since the last `trim`.
    taken: usize,
    /// The buffer whose bytes the last `pop` lent out; back to `free` at the next call.
    lent: Option<Vec<u8>>,
    /// Destinations of the datagrams in `ready`, by first finish (their rank in the
    /// drain); cleared when `ready` empties.
    ranks: FxMap<NodeId, u32>,
    /// Datagrams finished so far (the second key of `Ready::place`).
    finished: u64,
    /// `ready` holds datagrams not yet grouped by destination.
    ungrouped: bool,
    pub dropped: u64,
    /// Messages refused because they cannot fit one datagram of `max_datagram` bytes
    /// (never sent: the protocol must never build such a message; counted so tests catch it).
    pub oversize: u64,
    pub datagrams: u64,
    pub bytes: u64,
}

impl Outbox {
    pub fn new(from: NodeId, incarnation: u32, max_datagram: usize, max_pending: usize) -> Self {
        Outbox {
            from,
            incarnation,
            max_datagram,
            max_pending,
            open: Vec::new(),
            open_index: FxMap::default(),
            last_data: 0,
            ready: VecDeque::new(),
            free: Vec::new(),
            taken: 0,
            lent: None,
            ranks: FxMap::default(),
            finished: 0,
            ungrouped: false,
            dropped: 0,
            oversize: 0,
            datagrams: 0,
            bytes: 0,
        }
    }

    /// `dest`'s open datagram if it has `need` bytes left, else a fresh one (the old one
    /// queued). `need` must fit an empty datagram.
    fn room_for(&mut self, dest: NodeId, need: impl Fn(&Encoder<'_>) -> usize) -> usize {
        if let Some(&i) = self.open_index.get(&dest) {
            let o = &mut self.open[i];
            let room = o.buf.len() - o.state.len();
            let fits = Encoder::resume_at(&mut o.buf, o.state).is_ok_and(|e| room >= need(&e));
            if fits {
                return i;
            }
            self.close(i);
        }
        self.open_new(dest)
    }

    /// Append a message of body size `body` to `dest`'s open datagram (opening a new one
    /// when it does not fit). `write` encodes it. A message that cannot fit one datagram of
    /// `max_datagram` bytes is refused (counted in `oversize`): nothing larger ever leaves.
    pub fn push(
        &mut self,
        dest: NodeId,
        body: usize,
        write: impl FnOnce(&mut Encoder<'_>) -> Result<(), PacketError>,
    ) {
        let need = MESSAGE_HEADER_LEN + body;
        if DATAGRAM_HEADER_LEN + need > self.max_datagram {
            self.oversize += 1;
            return;
        }
        let idx = self.room_for(dest, |_| need);
        let o = &mut self.open[idx];
        if let Ok(mut enc) = Encoder::resume_at(&mut o.buf, o.state) {
            if write(&mut enc).is_ok() {
                o.state = enc.state();
            }
        }
    }

    /// Append a data message (a whole message continues `dest`'s open run of its stream when
    /// it can); refused and counted in `oversize` when it cannot fit one datagram.
    ///
    /// Most messages continue the run the destination's open datagram ends with: written
    /// in place, with no encoder resumed, the run checked once and the destination not
    /// looked up (a run extended fits its datagram, so the size check belongs to the other
    /// path). Taking the lookup and the size check off this path saved ~2% of the
    /// instructions per message of `tutti-bench proto`.
    #[inline]
    pub fn push_data(&mut self, dest: NodeId, header: &DataHeader, retransmit: bool, payload: &[u8]) {
        let i = match self.open.get(self.last_data) {
            Some(o) if o.dest == dest => Some(self.last_data),
            _ => self.open_index.get(&dest).copied(),
        };
        if let Some(i) = i {
            let o = &mut self.open[i];
            if o.state.extend_run(&mut o.buf, header, retransmit, payload) {
                self.last_data = i;
                return;
            }
        }
        self.push_data_new(dest, header, retransmit, payload);
    }

    /// [`Self::push_data`] for a message that does not extend an open run.
    fn push_data_new(&mut self, dest: NodeId, header: &DataHeader, retransmit: bool, payload: &[u8]) {
        if DATAGRAM_HEADER_LEN + data_len_alone(header, payload.len()) > self.max_datagram {
            self.oversize += 1;
            return;
        }
        let idx = self.room_for(dest, |e| e.data_len(header, retransmit, payload.len()));
        self.last_data = idx;
        let o = &mut self.open[idx];
        if let Ok(mut enc) = Encoder::resume_at(&mut o.buf, o.state) {
            if enc.push_data(header, retransmit, payload).is_ok() {
                o.state = enc.state();
            }
        }
    }

    fn open_new(&mut self, dest: NodeId) -> usize {
        let mut buf = self.free.pop().unwrap_or_else(|| vec![0u8; self.max_datagram]);
        self.taken += 1;
        debug_assert_eq!(buf.len(), self.max_datagram);
        let state = Encoder::new(&mut buf, self.from, self.incarnation)
            .map(|e| e.state())
            .unwrap_or_default();
        self.open.push(Open { dest, buf, state });
        let i = self.open.len() - 1;
        self.open_index.insert(dest, i);
        i
    }

    /// Finish open datagram `i`; leaves a hole that `flush` removes.
    fn close(&mut self, i: usize) {
        let o = &mut self.open[i];
        let buf = std::mem::take(&mut o.buf);
        let (dest, state) = (o.dest, o.state);
        o.state = EncoderState::default();
        self.open_index.remove(&dest);
        self.finish(dest, buf, state);
    }

    /// Queue a finished datagram (or recycle its buffer when it is empty or the queue full).
    fn finish(&mut self, dest: NodeId, buf: Vec<u8>, state: EncoderState) {
        if state.is_empty() {
            self.recycle(buf);
            return;
        }
        if self.ready.len() >= self.max_pending {
            self.dropped += 1;
            self.recycle(buf);
            return;
        }
        let len = state.len();
        debug_assert!(len <= self.max_datagram, "nothing over max_datagram leaves");
        self.datagrams += 1;
        self.bytes += len as u64;
        // Most datagrams follow one to the same destination: no lookup for those.
        let rank = match self.ready.back() {
            Some(last) if last.dest == dest => last.place.0,
            _ => {
                let next_rank = self.ranks.len() as u32;
                *self.ranks.entry(dest).or_insert(next_rank)
            }
        };
        self.finished += 1;
        self.ungrouped = true;
        self.ready.push_back(Ready {
            dest,
            buf,
            len,
            place: (rank, self.finished),
        });
    }

    /// Puts each destination's waiting datagrams together, keeping their order (the sort
    /// is unstable but the keys are unique; it allocates nothing). A destination keeps its
    /// rank until `ready` is empty, so a datagram finished in the middle of a drain never
    /// passes an older one to the same destination.
    fn group_by_destination(&mut self) {
        self.ungrouped = false;
        if self.ranks.len() > 1 {
            self.ready.make_contiguous().sort_unstable_by_key(|r| r.place);
        }
    }

    fn recycle(&mut self, buf: Vec<u8>) {
        if buf.len() == self.max_datagram && self.free.len() < MAX_FREE_BUFFERS {
            self.free.push(buf);
        }
    }

    /// Once a round: frees pooled buffers beyond what the last round put to use (keeping at
    /// least `MIN_FREE_BUFFERS`), so that a burst (a view served in a hundred parts) does
    /// not hold its buffers for good: a simulator's 10,000 nodes would each keep one.
    pub fn trim(&mut self) {
        let keep = self.taken.max(MIN_FREE_BUFFERS);
        if self.free.len() > keep {
            self.free.truncate(keep);
            self.free.shrink_to(keep);
        }
        if self.ready.is_empty() && self.ready.capacity() > keep {
            self.ready.shrink_to(keep);
        }
        self.taken = 0;
    }

    /// Buffers held for reuse.
    pub fn pooled(&self) -> usize {
        self.free.len()
    }

    /// Finish every open datagram, in the order they were opened.
    pub fn flush(&mut self) {
        self.open_index.clear();
        let mut open = std::mem::take(&mut self.open);
        for o in open.drain(..) {
            if !o.buf.is_empty() {
                self.finish(o.dest, o.buf, o.state);
            }
        }
        self.open = open; // keeps its capacity
    }

    /// The next datagram to send, `(dest, bytes)`; its bytes are lent until the next call.
    /// Every message pushed before the call is in a datagram of this drain, one
    /// destination's datagrams next to each other (see the module's first lines).
    pub fn pop(&mut self) -> Option<(NodeId, &[u8])> {
        if let Some(buf) = self.lent.take() {
            self.recycle(buf);
        }
        if !self.open.is_empty() {
            self.flush();
        }
        if self.ungrouped {
            self.group_by_destination();
        }
        let Some(r) = self.ready.pop_front() else {
            self.ranks.clear();
            return None;
        };
        if self.ready.is_empty() {
            self.ranks.clear();
        }
        let buf = self.lent.insert(r.buf);
        Some((r.dest, buf.get(..r.len).unwrap_or(&[])))
    }

    pub fn pending(&self) -> usize {
        self.ready.len() + self.open.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tutti_wire::packet::{decode, Message};

    fn data(seq: u64, frag_count: u16) -> DataHeader {
        DataHeader {
            group: 7,
            seq,
            sender: 1,
            stream: 2,
            retained: seq as u32,
            session: 3,
            frag_index: 0,
            frag_count,
        }
    }

    /// `(dest, seqs of the data messages)` of every datagram, checking each is within `max`.
    fn drain(out: &mut Outbox, max: usize) -> Vec<(NodeId, Vec<u64>)> {
        let mut all = Vec::new();
        while let Some((dest, bytes)) = out.pop() {
            assert!(bytes.len() <= max, "a datagram of {} bytes left", bytes.len());
            all.push((dest, seqs_in(bytes)));
        }
        all
    }

    /// The data seqs a datagram carries, in order.
    fn seqs_in(bytes: &[u8]) -> Vec<u64> {
        let mut seqs = Vec::new();
        for m in decode(bytes).expect("valid datagram").messages() {
            match m {
                Message::Data { header, .. } => seqs.push(header.seq),
                Message::DataRun { messages, .. } => seqs.extend(messages.iter().map(|(h, _)| h.seq)),
                _ => {}
            }
        }
        seqs
    }

    /// The seqs `sent` carried to `dest`, in the order they left.
    fn seqs_to(sent: &[(NodeId, Vec<u64>)], dest: NodeId) -> Vec<u64> {
        sent.iter()
            .filter(|(d, _)| *d == dest)
            .flat_map(|(_, s)| s.iter().copied())
            .collect()
    }

    #[test]
    fn a_message_larger_than_a_datagram_is_refused_and_nothing_oversize_leaves() {
        let max = 200;
        let mut out = Outbox::new(1, 1, max, 64);
        let fits = max - DATAGRAM_HEADER_LEN - MESSAGE_HEADER_LEN - core::mem::size_of::<DataHeader>();
        out.push_data(9, &data(0, 2), false, &vec![1u8; fits]);
        out.push_data(9, &data(1, 2), false, &vec![2u8; fits + 1]);
        out.push_data(9, &data(2, 1), false, &vec![3u8; 10 * max]);
        out.push_data(9, &data(3, 1), false, &[4u8; 5]);
        out.push(9, max, |e| e.push_view_request(&Default::default(), &[]));
        assert_eq!(
            out.oversize, 3,
            "every message too large for one datagram counted"
        );
        let seqs: Vec<u64> = drain(&mut out, max).into_iter().flat_map(|(_, s)| s).collect();
        assert_eq!(seqs, vec![0, 3], "only the messages that fit were sent");
    }

    #[test]
    fn datagrams_fill_up_to_max_datagram_in_runs_and_buffers_are_reused() {
        let max = 1472;
        let mut out = Outbox::new(1, 1, max, 1024);
        for seq in 0..1000 {
            out.push_data(9, &data(seq, 1), false, &[5u8; 64]);
        }
        assert_eq!(out.oversize, 0);
        let sent = drain(&mut out, max);
        let seqs: Vec<u64> = sent.iter().flat_map(|(_, s)| s.iter().copied()).collect();
        assert_eq!(seqs, (0..1000).collect::<Vec<_>>());
        assert_eq!(
            sent.len(),
            1000usize.div_ceil(21),
            "21 messages of 64 bytes a datagram"
        );
        assert!(out.free.len() >= 2, "buffers came back to the pool");
        let pooled = out.free.len();
        for seq in 1000..1021 {
            out.push_data(9, &data(seq, 1), false, &[5u8; 64]);
        }
        assert_eq!(
            out.free.len(),
            pooled - 1,
            "a pooled buffer was taken, none allocated"
        );
    }

    #[test]
    fn a_burst_keeps_its_buffers_for_one_round_only() {
        let max = 1472;
        let mut out = Outbox::new(1, 1, max, 1024);
        for seq in 0..2100 {
            out.push_data(9, &data(seq, 1), false, &[5u8; 64]);
        }
        let sent = drain(&mut out, max);
        assert_eq!(sent.len(), 100);
        assert!(out.pooled() >= 99, "the burst's buffers came back to the pool");
        out.trim();
        assert!(
            out.pooled() >= 99,
            "kept while the round that used them is the last"
        );
        out.trim();
        assert_eq!(out.pooled(), MIN_FREE_BUFFERS, "freed after a round without use");
    }

    #[test]
    fn a_destinations_datagrams_leave_together_and_in_order() {
        // Runs disseminated to two members alternate datagram by datagram; the drain hands
        // out each member's datagrams next to each other (one offload send each), in order.
        let max = 200;
        let mut out = Outbox::new(1, 1, max, 1024);
        for seq in 0..40 {
            out.push_data(8, &data(seq, 1), false, &[5u8; 64]);
            out.push_data(9, &data(seq, 1), false, &[6u8; 64]);
        }
        let (first, rest) = {
            let sent = drain(&mut out, max);
            assert!(
                sent.len() >= 20,
                "several datagrams per destination: {}",
                sent.len()
            );
            let dests: Vec<NodeId> = sent.iter().map(|(d, _)| *d).collect();
            let switches = dests.windows(2).filter(|w| w[0] != w[1]).count();
            assert_eq!(switches, 1, "one destination after the other: {dests:?}");
            assert_eq!(seqs_to(&sent, 8), (0..40).collect::<Vec<_>>());
            assert_eq!(seqs_to(&sent, 9), (0..40).collect::<Vec<_>>());
            (dests[0], dests[dests.len() - 1])
        };
        assert_eq!(
            (first, rest),
            (8, 9),
            "destinations in the order of their first datagram"
        );

        // Pushed in the middle of a drain: never ahead of an older datagram to its
        // destination.
        for seq in 0..20 {
            out.push_data(9, &data(seq, 1), false, &[6u8; 64]);
            out.push_data(8, &data(seq, 1), false, &[5u8; 64]);
        }
        let mut seen: Vec<(NodeId, Vec<u64>)> = Vec::new();
        let mut pushed = false;
        while let Some((dest, bytes)) = out.pop() {
            seen.push((dest, seqs_in(bytes)));
            if !pushed {
                pushed = true;
                for seq in 20..30 {
                    out.push_data(8, &data(seq, 1), false, &[5u8; 64]);
                    out.push_data(7, &data(seq, 1), false, &[7u8; 64]);
                }
            }
        }
        assert_eq!(seqs_to(&seen, 9), (0..20).collect::<Vec<_>>());
        assert_eq!(seqs_to(&seen, 8), (0..30).collect::<Vec<_>>());
        assert_eq!(seqs_to(&seen, 7), (20..30).collect::<Vec<_>>());
        assert_eq!(seen[0].0, 9, "the first destination of this drain goes first");
    }

    /// Every message of every datagram `out` holds, as `(dest, header, retransmit, bytes)`
    /// (control messages left out), each datagram within `max`.
    fn drain_data(out: &mut Outbox, max: usize, got: &mut Vec<(NodeId, DataHeader, bool, Vec<u8>)>) {
        while let Some((dest, bytes)) = out.pop() {
            assert!(bytes.len() <= max);
            for m in decode(bytes).expect("valid datagram").messages() {
                match m {
                    Message::Data {
                        header,
                        retransmit,
                        payload,
                    } => got.push((dest, header, retransmit, payload.to_vec())),
                    Message::DataRun {
                        messages, retransmit, ..
                    } => got.extend(messages.iter().map(|(h, p)| (dest, h, retransmit, p.to_vec()))),
                    _ => {}
                }
            }
        }
    }

    proptest::proptest! {
        /// Whatever mix goes in (runs continued in place, broken by another stream, session,
        /// retransmit flag or seq, datagrams filling up, fragments, control messages between
        /// them, drains in the middle that move the open datagrams the data path remembers),
        /// each destination's datagrams decode to exactly its messages, headers and bytes,
        /// in the order pushed.
        #[test]
        fn every_destination_gets_exactly_its_messages_in_order(
            msgs in proptest::collection::vec(
                (0u32..3, 0u32..2, 0u32..2, proptest::bool::ANY, 0u64..3, 0usize..700, 1u16..3, 0u8..12),
                1..300,
            )
        ) {
            let max = 1472;
            let mut out = Outbox::new(1, 1, max, 1 << 16);
            let mut want: Vec<(NodeId, DataHeader, bool, Vec<u8>)> = Vec::new();
            let mut got: Vec<(NodeId, DataHeader, bool, Vec<u8>)> = Vec::new();
            let mut seq = [0u64; 2];
            for (i, &(dest, stream, session, retransmit, skip, len, frag_count, act)) in msgs.iter().enumerate() {
                match act {
                    // A control message to this or another destination between data.
                    0 | 1 => {
                        let to = (dest + u32::from(act)) % 3;
                        let body = core::mem::size_of::<tutti_wire::packet::GroupChange>();
                        out.push(to, body, |e| e.push_group_leave(7));
                    }
                    // What is queued leaves now (the open datagrams are finished).
                    2 => drain_data(&mut out, max, &mut got),
                    _ => {}
                }
                // Seqs of a stream are shared by the destinations (a sender's tree children
                // get the same messages): a run open to one destination is continued by
                // the next message to another, which must not go into it.
                let s = &mut seq[stream as usize];
                *s += skip;
                let h = DataHeader {
                    group: 7,
                    seq: *s,
                    sender: 4,
                    stream,
                    retained: *s as u32 + 2,
                    session,
                    frag_index: 0,
                    frag_count,
                };
                *s += 1;
                let payload: Vec<u8> = (0..len).map(|b| (b + i) as u8).collect();
                out.push_data(dest, &h, retransmit, &payload);
                want.push((dest, h, retransmit, payload));
            }
            drain_data(&mut out, max, &mut got);
            for dest in 0..3 {
                let of = |v: &[(NodeId, DataHeader, bool, Vec<u8>)]| {
                    v.iter().filter(|m| m.0 == dest).cloned().collect::<Vec<_>>()
                };
                proptest::prop_assert_eq!(of(&got), of(&want));
            }
        }
    }

    #[test]
    fn messages_to_different_destinations_and_streams_do_not_mix() {
        let mut out = Outbox::new(1, 1, 1472, 64);
        out.push_data(8, &data(0, 1), false, b"a");
        out.push_data(9, &data(0, 1), false, b"b");
        out.push_data(8, &data(1, 1), false, b"c");
        out.push_data(8, &data(5, 1), true, b"d");
        let sent = drain(&mut out, 1472);
        assert_eq!(sent, vec![(8, vec![0, 1, 5]), (9, vec![0])]);
    }
}
