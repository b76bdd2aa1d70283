//! Packs outgoing messages per destination into datagrams (many small messages share one)
//! and queues finished datagrams for `poll_transmit`, bounded.

use crate::fxhash::FxMap;
use crate::{NodeId, Transmit};
use std::collections::VecDeque;
use tutti_wire::packet::{Encoder, PacketError, DATAGRAM_HEADER_LEN, MESSAGE_HEADER_LEN};

struct Open {
    dest: NodeId,
    buf: Vec<u8>,
    len: usize,
    count: u16,
}

pub struct Outbox {
    from: NodeId,
    incarnation: u32,
    max_datagram: usize,
    max_pending: usize,
    open: Vec<Open>,
    open_index: FxMap<NodeId, usize>,
    ready: VecDeque<Transmit>,
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
            ready: VecDeque::new(),
            dropped: 0,
            oversize: 0,
            datagrams: 0,
            bytes: 0,
        }
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
        let idx = match self.open_index.get(&dest) {
            Some(&i) if self.open[i].buf.len() - self.open[i].len >= need => i,
            Some(&i) => {
                self.close(i);
                self.open_new(dest, need)
            }
            None => self.open_new(dest, need),
        };
        let o = &mut self.open[idx];
        if let Ok(mut enc) = Encoder::resume(&mut o.buf, o.len, o.count) {
            if write(&mut enc).is_ok() {
                o.len = enc.len();
                o.count = enc.count();
            }
        }
    }

    fn open_new(&mut self, dest: NodeId, need: usize) -> usize {
        debug_assert!(DATAGRAM_HEADER_LEN + need <= self.max_datagram, "refused in push");
        let mut buf = vec![0u8; self.max_datagram];
        let len = Encoder::new(&mut buf, self.from, self.incarnation)
            .map(|e| e.len())
            .unwrap_or(0);
        self.open.push(Open {
            dest,
            buf,
            len,
            count: 0,
        });
        let i = self.open.len() - 1;
        self.open_index.insert(dest, i);
        i
    }

    /// Finish open datagram `i`; leaves a hole that `flush` removes.
    fn close(&mut self, i: usize) {
        let o = &mut self.open[i];
        let mut buf = std::mem::take(&mut o.buf);
        self.open_index.remove(&o.dest);
        if o.count == 0 {
            return;
        }
        buf.truncate(o.len);
        let dest = o.dest;
        o.count = 0;
        self.enqueue(Transmit { dest, payload: buf });
    }

    fn enqueue(&mut self, t: Transmit) {
        if self.ready.len() >= self.max_pending {
            self.dropped += 1;
            return;
        }
        self.datagrams += 1;
        self.bytes += t.payload.len() as u64;
        self.ready.push_back(t);
    }

    /// Finish every open datagram, in the order they were opened.
    pub fn flush(&mut self) {
        let open = std::mem::take(&mut self.open);
        self.open_index.clear();
        for mut o in open {
            if o.count > 0 && !o.buf.is_empty() {
                o.buf.truncate(o.len);
                self.enqueue(Transmit {
                    dest: o.dest,
                    payload: o.buf,
                });
            }
        }
    }

    pub fn pop(&mut self) -> Option<Transmit> {
        if self.ready.is_empty() {
            self.flush();
        }
        self.ready.pop_front()
    }

    pub fn pending(&self) -> usize {
        self.ready.len() + self.open.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tutti_wire::packet::{decode, DataHeader, Message};

    fn data(seq: u64) -> DataHeader {
        DataHeader {
            group: 7,
            seq,
            sender: 1,
            stream: 2,
            retained: 0,
            session: 3,
            frag_index: 0,
            frag_count: 1,
        }
    }

    fn push_data(out: &mut Outbox, dest: NodeId, seq: u64, payload: &[u8]) {
        let h = data(seq);
        out.push(dest, core::mem::size_of::<DataHeader>() + payload.len(), |e| {
            e.push_data(&h, false, payload)
        });
    }

    #[test]
    fn a_message_larger_than_a_datagram_is_refused_and_nothing_oversize_leaves() {
        let max = 200;
        let mut out = Outbox::new(1, 1, max, 64);
        let fits = max - DATAGRAM_HEADER_LEN - MESSAGE_HEADER_LEN - core::mem::size_of::<DataHeader>();
        push_data(&mut out, 9, 0, &vec![1u8; fits]);
        push_data(&mut out, 9, 1, &vec![2u8; fits + 1]);
        push_data(&mut out, 9, 2, &vec![3u8; 10 * max]);
        push_data(&mut out, 9, 3, &[4u8; 5]);
        assert_eq!(out.oversize, 2, "both messages too large for one datagram counted");
        let mut seqs = Vec::new();
        while let Some(t) = out.pop() {
            assert!(t.payload.len() <= max, "a datagram of {} bytes left", t.payload.len());
            for m in decode(&t.payload).expect("valid datagram").messages() {
                if let Message::Data { header, .. } = m {
                    seqs.push(header.seq);
                }
            }
        }
        assert_eq!(seqs, vec![0, 3], "only the messages that fit were sent");
    }

    #[test]
    fn datagrams_fill_up_to_max_datagram_and_no_further() {
        let max = 1472;
        let mut out = Outbox::new(1, 1, max, 1024);
        for seq in 0..1000 {
            push_data(&mut out, 9, seq, &[5u8; 64]);
        }
        assert_eq!(out.oversize, 0);
        let mut n = 0;
        while let Some(t) = out.pop() {
            assert!(t.payload.len() <= max);
            n += decode(&t.payload).expect("valid").messages().count();
        }
        assert_eq!(n, 1000);
    }
}
