//! The lowest-level client a test can be: speaks the control protocol by hand, keeps every
//! descriptor the daemon sends, and writes its publish ring word by word, so that it can
//! lie in any way a hostile process could. Also an honest client running in a thread, to
//! show that the others carry on while one misbehaves.

#![allow(dead_code)]

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tutti_client::{Client, Event, GroupId, IdleStrategy, OfferError};
use tutti_sys::{Mapping, SeqPacket};
use tutti_wire::control::{Joined, Reply, Request, Rights, MAX_MESSAGE, PROTOCOL_VERSION};
use tutti_wire::shm::{DATA_OFFSET, PUBLISH_FRAME_HEADER_LEN, PUB_HEAD, PUB_TAIL};

/// A control session spoken by hand.
pub struct RawSession {
    pub conn: SeqPacket,
    pub session_id: u32,
    pub node_id: u32,
    buf: Vec<u8>,
}

/// A join's answer: the header and the descriptors in the order the daemon sent them
/// (log, group doorbell for a subscriber; then ring, shard doorbell, eventfd on a
/// publisher's first join on a shard).
pub struct RawJoin {
    pub joined: Joined,
    pub fds: Vec<OwnedFd>,
}

impl RawJoin {
    /// The publish ring's descriptor, when this join brought one.
    pub fn ring_fd(&self) -> Option<&OwnedFd> {
        let subscribe = Rights::from_u8(self.joined.rights).map_or(true, |r| r.subscribe);
        (self.joined.new_shard != 0).then(|| &self.fds[if subscribe { 2 } else { 0 }])
    }

    /// The shard's eventfd (to wake it after a commit), when this join brought a ring.
    pub fn shard_eventfd(&self) -> Option<&OwnedFd> {
        let subscribe = Rights::from_u8(self.joined.rights).map_or(true, |r| r.subscribe);
        (self.joined.new_shard != 0).then(|| &self.fds[if subscribe { 4 } else { 2 }])
    }

    /// The delivery log's descriptor, when joined with the subscribe right.
    pub fn log_fd(&self) -> Option<&OwnedFd> {
        let subscribe = Rights::from_u8(self.joined.rights).map_or(true, |r| r.subscribe);
        subscribe.then(|| &self.fds[0])
    }
}

impl RawSession {
    /// Connects and says Hello; the daemon's refusal comes back as its decoded reply text.
    pub fn connect(socket: &Path) -> Result<RawSession, String> {
        let conn = SeqPacket::connect(socket).map_err(|e| e.to_string())?;
        let mut s = RawSession {
            conn,
            session_id: 0,
            node_id: 0,
            buf: vec![0; MAX_MESSAGE],
        };
        let (reply, _) = s.call(&Request::Hello {
            version: PROTOCOL_VERSION,
            pid: std::process::id(),
        })?;
        match Reply::decode(&reply).map_err(|e| e.to_string())? {
            Reply::Welcome {
                session_id, node_id, ..
            } => {
                s.session_id = session_id;
                s.node_id = node_id;
                Ok(s)
            }
            other => Err(format!("{other:?}")),
        }
    }

    /// Sends one request and returns the raw reply with its descriptors.
    pub fn call(&mut self, request: &Request<'_>) -> Result<(Vec<u8>, Vec<OwnedFd>), String> {
        let mut out = Vec::new();
        request.encode(&mut out);
        self.conn.send(&out, &[]).map_err(|e| e.to_string())?;
        let mut fds = Vec::new();
        let n = self
            .conn
            .recv(&mut self.buf, &mut fds)
            .map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("session ended".into());
        }
        Ok((self.buf[..n].to_vec(), fds))
    }

    pub fn join(&mut self, name: &str, rights: Rights) -> Result<RawJoin, String> {
        let (reply, fds) = self.call(&Request::Join {
            name,
            rights,
            options: Default::default(),
        })?;
        match Reply::decode(&reply).map_err(|e| e.to_string())? {
            Reply::Joined(joined) => Ok(RawJoin { joined, fds }),
            other => Err(format!("{other:?}")),
        }
    }

    /// This session's sender id as subscribers see it.
    pub fn sender_id(&self) -> u64 {
        (u64::from(self.node_id) << 32) | u64::from(self.session_id)
    }

    /// Waits until the daemon hangs up on this session (reads end of file).
    pub fn wait_ended(&self, timeout: Duration) -> bool {
        let mut buf = [0u8; 256];
        crate::common::eventually(timeout, || {
            let mut fds = Vec::new();
            matches!(self.conn.try_recv(&mut buf, &mut fds), Ok(0))
        })
    }
}

/// A publish ring written by hand through a writable mapping of its descriptor.
pub struct RawRing {
    map: Mapping,
    capacity: u64,
    /// Next position this producer writes (its own idea, which it may lie about).
    pub tail: u64,
}

impl RawRing {
    pub fn map(fd: &OwnedFd) -> RawRing {
        let len = tutti_sys::file_len(fd).unwrap();
        let map = Mapping::map(fd, len, true).unwrap();
        RawRing {
            capacity: (len - DATA_OFFSET) as u64,
            map,
            tail: 0,
        }
    }

    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    fn word(&self, offset: usize) -> &AtomicU64 {
        assert!(offset.is_multiple_of(8) && offset + 8 <= self.map.len());
        // SAFETY: in bounds and 8-aligned (checked; the mapping is page-aligned); the word
        // lives as long as the mapping borrowed by the result, and is only accessed
        // atomically by this process.
        unsafe { &*self.map.as_ptr().add(offset).cast::<AtomicU64>() }
    }

    fn byte(&self, offset: usize) -> &AtomicU8 {
        assert!(offset < self.map.len());
        // SAFETY: in bounds (checked); bytes are only accessed atomically by this process
        // (the daemon, another process, reads them concurrently, which is the point).
        unsafe { &*self.map.as_ptr().add(offset).cast::<AtomicU8>() }
    }

    /// Stores `tail` (Release), true or not.
    pub fn store_tail(&self, tail: u64) {
        self.word(PUB_TAIL).store(tail, Ordering::Release);
    }

    /// The consumer's head (Acquire).
    pub fn head(&self) -> u64 {
        self.word(PUB_HEAD).load(Ordering::Acquire)
    }

    fn offset(&self, position: u64) -> usize {
        DATA_OFFSET + (position % self.capacity) as usize
    }

    /// Writes bytes at a ring position (no wrap handling: callers keep frames aligned).
    pub fn write(&self, position: u64, bytes: &[u8]) {
        let at = self.offset(position);
        for (i, &b) in bytes.iter().enumerate() {
            self.byte(at + i).store(b, Ordering::Relaxed);
        }
    }

    /// Writes a frame header `{ len, group }` at a ring position.
    pub fn write_header(&self, position: u64, len: u32, group: u32) {
        let mut header = [0u8; PUBLISH_FRAME_HEADER_LEN];
        header[..4].copy_from_slice(&len.to_le_bytes());
        header[4..].copy_from_slice(&group.to_le_bytes());
        self.write(position, &header);
    }

    /// XORs one byte at a ring position (as the shard may be reading it).
    pub fn flip(&self, position: u64, mask: u8) {
        self.byte(self.offset(position))
            .fetch_xor(mask, Ordering::Relaxed);
    }

    /// Commits one well-formed frame if there is room (frames of a size that divides the
    /// capacity never need padding). Returns the frame's position.
    pub fn commit(&mut self, group: u32, payload: &[u8]) -> Option<u64> {
        let size = (PUBLISH_FRAME_HEADER_LEN + payload.len()) as u64;
        assert!(payload.len().is_multiple_of(8) && self.capacity.is_multiple_of(size));
        if self.tail + size - self.head() > self.capacity {
            return None;
        }
        let position = self.tail;
        self.write(position + PUBLISH_FRAME_HEADER_LEN as u64, payload);
        self.write_header(position, payload.len() as u32, group);
        self.tail += size;
        self.store_tail(self.tail);
        Some(position)
    }
}

/// An honest member (publish and subscribe) of a group in a thread: it publishes numbered
/// messages and checks it receives every one of its own, in order, intact.
pub struct Honest {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    handle: Option<JoinHandle<Result<u64, String>>>,
}

/// The honest member's message `index`.
pub fn honest_message(index: u64) -> Vec<u8> {
    let mut m = vec![(index % 251) as u8; 48];
    m[..8].copy_from_slice(&index.to_le_bytes());
    m
}

/// Receives what arrived (waiting up to `wait`), checking the member's own messages:
/// in order and intact, no lag, no loss.
fn receive_own(
    client: &mut Client,
    g: GroupId,
    me: u64,
    next: &mut u64,
    wait: Duration,
) -> Result<(), String> {
    let mut failure = None;
    client
        .poll_blocking(g, 256, IdleStrategy::Backoff, wait, |ev| match ev {
            Event::Message { sender, payload, .. } if sender == me => {
                if payload != honest_message(*next).as_slice() && failure.is_none() {
                    failure = Some(format!("message {next} arrived as {payload:?}"));
                }
                *next += 1;
            }
            Event::Message { .. } => {}
            Event::Lagged { missed } => failure = Some(format!("lagged by {missed}")),
            Event::Lost { .. } => failure = Some("a local group lost a message".into()),
            other => failure = Some(format!("a plain group delivered {other:?}")),
        })
        .map_err(|e| e.to_string())?;
    failure.map_or(Ok(()), Err)
}

impl Honest {
    pub fn start(socket: &Path, group: &str) -> Honest {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let (stop2, sent2) = (stop.clone(), sent.clone());
        let (socket, group) = (PathBuf::from(socket), group.to_string());
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let handle = std::thread::spawn(move || {
            let mut client = Client::connect_to(&socket).map_err(|e| e.to_string())?;
            let g = client.join(&group).map_err(|e| e.to_string())?;
            let me = client.sender_id();
            let _ = ready_tx.send(());
            let (mut next_send, mut next_recv) = (0u64, 0u64);
            while !stop2.load(Ordering::Relaxed) {
                match client.offer(g, &honest_message(next_send)) {
                    Ok(()) => {
                        next_send += 1;
                        sent2.store(next_send, Ordering::Relaxed);
                    }
                    Err(OfferError::BackPressured) => {}
                    Err(e) => return Err(format!("offer: {e}")),
                }
                receive_own(&mut client, g, me, &mut next_recv, Duration::from_millis(20))?;
            }
            let deadline = Instant::now() + Duration::from_secs(30);
            while next_recv < next_send {
                if Instant::now() > deadline {
                    return Err(format!("received {next_recv} of its {next_send} messages"));
                }
                receive_own(&mut client, g, me, &mut next_recv, Duration::from_millis(100))?;
            }
            Ok(next_send)
        });
        // The member is in the group before the test goes on.
        let _ = ready_rx.recv_timeout(Duration::from_secs(30));
        Honest {
            stop,
            sent,
            handle: Some(handle),
        }
    }

    /// Waits until it has published `more` messages past what it had now.
    pub fn wait_progress(&self, more: u64) -> bool {
        let from = self.sent.load(Ordering::Relaxed);
        crate::common::eventually(Duration::from_secs(30), || {
            self.sent.load(Ordering::Relaxed) >= from + more
                || self.handle.as_ref().is_some_and(|h| h.is_finished())
        }) && !self.handle.as_ref().is_some_and(|h| h.is_finished())
    }

    /// Stops publishing and returns how many it published, all of which it received.
    pub fn finish(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        let handle = self.handle.take().unwrap();
        match handle.join() {
            Ok(Ok(n)) => n,
            Ok(Err(e)) => panic!("the honest member failed: {e}"),
            Err(_) => panic!("the honest member panicked"),
        }
    }
}

impl Drop for Honest {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
