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
    /// Datagrams opened larger than `max_datagram` for a message that did not fit one
    /// (the protocol must never build such a message; counted so tests catch it).
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
    /// when it does not fit). `write` encodes it.
    pub fn push(
        &mut self,
        dest: NodeId,
        body: usize,
        write: impl FnOnce(&mut Encoder<'_>) -> Result<(), PacketError>,
    ) {
        let need = MESSAGE_HEADER_LEN + body;
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
        if DATAGRAM_HEADER_LEN + need > self.max_datagram {
            self.oversize += 1;
        }
        let size = self.max_datagram.max(DATAGRAM_HEADER_LEN + need);
        let mut buf = vec![0u8; size];
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
