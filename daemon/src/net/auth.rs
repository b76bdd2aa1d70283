//! Authenticated, optionally encrypted cluster datagrams: a [`Transport`] wrapper that
//! seals every outgoing datagram with an AEAD tag under the cluster key and hands the
//! shard only incoming datagrams whose tag verifies and that are not replays. It sits
//! outside fault injection (`Auth(Faulty(udp))`), so injected corruption hits sealed bytes.
//!
//! ```text
//! datagram = header (16 B, tutti_wire::packet::DatagramHeader) | body | trailer (34 B)
//! trailer  = key_id (u8) | suite (u8) | salt (u64 LE) | counter (u64 LE) | tag (16 B)
//! ```
//!
//! **Keys and nonces.** Each configured key `K` (256 bits from its file) is turned into an
//! HKDF-SHA256 pseudo-random key. Its one-byte `key_id` (HKDF-expand "key id") tells a
//! receiver which configured key a datagram claims, so a rotation costs one AEAD check,
//! not two. A sender draws a random 64-bit `salt` at start and seals everything it sends in
//! that run with a key of its own: `HKDF-expand(K, "datagram key" | suite | node | incarnation | salt)`.
//! The nonce is the 64-bit `counter` (zero-padded to 96 bits), which starts at 0 and grows
//! by one per datagram sealed. A (key, nonce) pair therefore repeats only if the same node
//! id, incarnation and 64-bit random salt come back together: even two daemons misconfigured
//! with one node id and a clock-derived incarnation do not collide (2^-64 per pair of starts).
//!
//! **Suites** (measured on this project's host, 1,400-byte datagrams, ns per datagram, see
//! docs/security.md): `1` authenticates only: ChaCha20-Poly1305 with the whole datagram up
//! to the tag as associated data (~0.5 us with `ring`, the fastest of the candidates for
//! MAC-only use); `2` encrypts the body: AES-256-GCM with header and trailer as associated
//! data (~0.25 us with `ring` on AES-NI + CLMUL). A receiver accepts both, so `encrypt` can
//! be switched by a rolling restart; it sends with the one its config names.
//!
//! **Before the tag checks** only the fixed header's `from` and `incarnation` and the
//! trailer are read (to find the key and the sender's replay window); nothing else is
//! parsed. **Replay**: per sender run (node, incarnation, salt, key, suite) a sliding
//! window of [`REPLAY_WINDOW`] counters; a counter below it, or seen in it, is dropped.
//! Windows live in a table of at most [`MAX_AUTH_SENDERS`] entries, created only for a
//! datagram that verified; when full, the least recently heard sender is evicted (counted).

use super::{NetStats, SendError, Transport};
use ring::aead::{Aad, LessSafeKey, Nonce, Tag, UnboundKey, AES_256_GCM, CHACHA20_POLY1305};
use ring::hkdf;
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tutti_wire::cluster_key::{parse_key, KEY_LEN};
use tutti_wire::packet::{DATAGRAM_HEADER_LEN, MAGIC};

/// Bytes the trailer adds to every datagram.
pub const TRAILER_LEN: usize = 1 + 1 + 8 + 8 + TAG_LEN;
const TAG_LEN: usize = 16;
/// Trailer bytes before the tag (covered by it).
const PREFIX_LEN: usize = TRAILER_LEN - TAG_LEN;
/// Counters a replay window spans: a datagram this many behind its sender's newest is
/// dropped as a replay even if never seen (reordering on a real network is far shorter).
pub const REPLAY_WINDOW: u64 = 1024;
const WINDOW_WORDS: usize = (REPLAY_WINDOW / 64) as usize;
/// Sender runs whose replay windows are kept (a daemon restart is a new run). ~0.7 KiB each.
pub const MAX_AUTH_SENDERS: usize = 4096;
/// At most one log line per this period about rejected datagrams (with the count).
const REJECT_LOG_INTERVAL: Duration = Duration::from_secs(1);
/// HKDF salt: binds every derived key to this protocol and version.
const HKDF_SALT: &[u8] = b"tutti cluster key v1";

/// How a datagram is protected (the trailer's `suite` byte).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Suite {
    /// ChaCha20-Poly1305 over the whole datagram as associated data: authentic, readable.
    AuthOnly = 1,
    /// AES-256-GCM: the body is encrypted, header and trailer authenticated.
    Encrypted = 2,
}

impl Suite {
    fn from_u8(v: u8) -> Option<Suite> {
        match v {
            1 => Some(Suite::AuthOnly),
            2 => Some(Suite::Encrypted),
            _ => None,
        }
    }

    fn algorithm(self) -> &'static ring::aead::Algorithm {
        match self {
            Suite::AuthOnly => &CHACHA20_POLY1305,
            Suite::Encrypted => &AES_256_GCM,
        }
    }
}

/// A 256-bit cluster key. Its `Debug` shows the key id only.
#[derive(Clone)]
pub struct ClusterKey {
    bytes: [u8; KEY_LEN],
}

impl std::fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ClusterKey(id {:#04x})", KeySlot::new(self).id)
    }
}

/// Why a key file cannot be used; the message names the path and the fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyFileError {
    #[error("cluster key file {path}: {error}")]
    Unreadable { path: PathBuf, error: String },
    #[error(
        "cluster key file {path} is accessible by group or others (mode {mode:04o}): anyone who can read it can join \
         and forge cluster traffic; run `chmod 600 {path}` (owned by the daemon's user)"
    )]
    Permissions { path: PathBuf, mode: u32 },
    #[error("cluster key file {path}: {error}; create a key with `tutti keygen {path}`")]
    Format { path: PathBuf, error: String },
}

impl ClusterKey {
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> ClusterKey {
        ClusterKey { bytes }
    }

    /// Whether two keys are the same key (not in constant time: for configuration checks).
    pub fn bytes_eq(&self, other: &ClusterKey) -> bool {
        self.bytes == other.bytes
    }

    /// Reads a key file (`tutti keygen`'s format), refusing one that group or others may
    /// read or write.
    pub fn load(path: &Path) -> Result<ClusterKey, KeyFileError> {
        use std::io::Read;
        use std::os::unix::fs::MetadataExt;
        let shown = || PathBuf::from(path);
        let unreadable = |e: io::Error| KeyFileError::Unreadable {
            path: shown(),
            error: e.to_string(),
        };
        let mut file = std::fs::File::open(path).map_err(unreadable)?;
        let meta = file.metadata().map_err(unreadable)?;
        if !meta.is_file() {
            return Err(KeyFileError::Unreadable {
                path: shown(),
                error: "not a regular file".into(),
            });
        }
        let mode = meta.mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(KeyFileError::Permissions { path: shown(), mode });
        }
        // A key file is 65 bytes; read a little more to tell "too long" from "just right".
        let mut text = String::new();
        (&mut file)
            .take(256)
            .read_to_string(&mut text)
            .map_err(|e| KeyFileError::Format {
                path: shown(),
                error: e.to_string(),
            })?;
        let bytes = parse_key(&text).map_err(|e| KeyFileError::Format {
            path: shown(),
            error: e.to_string(),
        })?;
        Ok(ClusterKey { bytes })
    }
}

/// The keys of `[cluster]`: the primary (used to send and accepted), an optional second one
/// accepted during a rotation, and whether to encrypt.
#[derive(Debug, Clone)]
pub struct AuthKeys {
    pub primary: ClusterKey,
    pub next: Option<ClusterKey>,
    pub encrypt: bool,
}

/// What the sealer needs to know about its own node.
#[derive(Debug, Clone)]
pub struct AuthSetup {
    pub keys: AuthKeys,
    pub node: u32,
    pub incarnation: u32,
}

/// What authentication did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AuthStats {
    /// Datagrams sealed and handed to the inner transport.
    pub sealed: u64,
    /// Of those, sent again as sealed for the previous peer (same bytes to another peer).
    pub reused: u64,
    /// Datagrams that verified and were handed on.
    pub verified: u64,
    /// Datagrams dropped: too short, unknown key or suite, or a tag that does not verify.
    pub auth_failed: u64,
    /// Datagrams dropped as replays (seen before, or older than the window).
    pub replayed: u64,
    /// Senders evicted from the full sender table.
    pub senders_full: u64,
}

/// One configured key: its id and HKDF pseudo-random key.
struct KeySlot {
    id: u8,
    prk: hkdf::Prk,
}

/// Length type for `hkdf::Prk::expand` of a raw byte string.
struct Len(usize);

impl hkdf::KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

impl KeySlot {
    fn new(key: &ClusterKey) -> KeySlot {
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, HKDF_SALT).extract(&key.bytes);
        let mut id = [0u8; 1];
        prk.expand(&[b"key id"], Len(1))
            .and_then(|okm| okm.fill(&mut id))
            .expect("HKDF-SHA256 expands to 1 byte");
        KeySlot { id: id[0], prk }
    }

    /// The key of one sender run.
    fn datagram_key(&self, suite: Suite, node: u32, incarnation: u32, salt: u64) -> LessSafeKey {
        let (n, i, s) = (node.to_le_bytes(), incarnation.to_le_bytes(), salt.to_le_bytes());
        let info: [&[u8]; 5] = [b"datagram key", &[suite as u8], &n, &i, &s];
        let okm = self
            .prk
            .expand(&info, suite.algorithm())
            .expect("HKDF-SHA256 expands to an AEAD key length");
        LessSafeKey::new(UnboundKey::from(okm))
    }
}

fn nonce(counter: u64) -> Nonce {
    let mut n = [0u8; 12];
    n[..8].copy_from_slice(&counter.to_le_bytes());
    Nonce::assume_unique_for_key(n)
}

/// Counters of one sender run seen lately: accepts each counter at most once, and none
/// more than [`REPLAY_WINDOW`] behind the newest.
#[derive(Clone)]
struct ReplayWindow {
    /// One past the highest counter accepted (0: none yet).
    top: u64,
    /// Bit `c % REPLAY_WINDOW` is set when counter `c` (within the window) was accepted.
    seen: [u64; WINDOW_WORDS],
}

impl ReplayWindow {
    fn new() -> ReplayWindow {
        ReplayWindow {
            top: 0,
            seen: [0; WINDOW_WORDS],
        }
    }

    fn bit(c: u64) -> (usize, u64) {
        let i = c % REPLAY_WINDOW;
        ((i / 64) as usize, 1u64 << (i % 64))
    }

    /// Whether `c` would be accepted (not seen, not too old).
    fn is_fresh(&self, c: u64) -> bool {
        if c >= self.top {
            return true;
        }
        if self.top - c > REPLAY_WINDOW {
            return false;
        }
        let (w, b) = Self::bit(c);
        self.seen[w] & b == 0
    }

    /// Records `c` (verified and fresh); slides the window when `c` is the newest.
    fn accept(&mut self, c: u64) {
        debug_assert!(self.is_fresh(c) && c < u64::MAX);
        if c >= self.top {
            let advance = c + 1 - self.top;
            if advance >= REPLAY_WINDOW {
                self.seen = [0; WINDOW_WORDS];
            } else {
                // Positions top..=c now stand for new counters: clear them.
                for k in self.top..=c {
                    let (w, b) = Self::bit(k);
                    self.seen[w] &= !b;
                }
            }
            self.top = c + 1;
        }
        let (w, b) = Self::bit(c);
        self.seen[w] |= b;
    }
}

/// A sender run: whose datagrams share one derived key and one replay window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct SenderRun {
    node: u32,
    incarnation: u32,
    salt: u64,
    key_id: u8,
    suite: Suite,
}

struct SenderState {
    key: LessSafeKey,
    window: ReplayWindow,
    /// `Receiver::clock` when it was last verified (eviction picks the smallest).
    last_used: u64,
}

/// Why a datagram was dropped (for the rate-limited log line).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reject {
    TooShort,
    NotTutti,
    UnknownSuite,
    UnknownKey,
    BadTag,
    Replayed,
}

/// The receiving half: keys, sender table, counters, log limiter.
struct Receiver {
    slots: Vec<KeySlot>,
    senders: HashMap<SenderRun, SenderState>,
    max_senders: usize,
    clock: u64,
    scratch: Box<[u8]>,
    stats: AuthStats,
    log: RejectLog,
}

#[derive(Default)]
struct RejectLog {
    last: Option<Instant>,
    pending: u64,
}

impl RejectLog {
    fn note(&mut self, reason: Reject, from: SocketAddr, stats: &AuthStats) {
        self.pending += 1;
        let now = Instant::now();
        if self
            .last
            .is_none_or(|t| now.duration_since(t) >= REJECT_LOG_INTERVAL)
        {
            tracing::warn!(
                count = self.pending,
                last_reason = ?reason,
                last_from = %from,
                auth_failed = stats.auth_failed,
                replayed = stats.replayed,
                "cluster datagrams rejected (not authentic with the cluster key, or replayed)"
            );
            self.pending = 0;
            self.last = Some(now);
        }
    }
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

impl Receiver {
    /// Verifies `bytes`; on success returns the datagram without its trailer (decrypted
    /// into `scratch` when it was encrypted).
    fn open<'a>(&'a mut self, bytes: &'a [u8]) -> Result<&'a [u8], Reject> {
        let len = bytes.len();
        if len < DATAGRAM_HEADER_LEN + TRAILER_LEN {
            return Err(Reject::TooShort);
        }
        // The fixed header (read only to find the key and the window) and the trailer.
        if u32_at(bytes, 0) != MAGIC {
            return Err(Reject::NotTutti);
        }
        let t = len - TRAILER_LEN;
        let run = SenderRun {
            node: u32_at(bytes, 8),
            incarnation: u32_at(bytes, 12),
            key_id: bytes[t],
            suite: Suite::from_u8(bytes[t + 1]).ok_or(Reject::UnknownSuite)?,
            salt: u64_at(bytes, t + 2),
        };
        let counter = u64_at(bytes, t + 10);
        let mut tag = [0u8; TAG_LEN];
        tag.copy_from_slice(&bytes[t + PREFIX_LEN..]);
        if counter == u64::MAX {
            // Never sent (the sealer stops before it); would overflow the window.
            return Err(Reject::BadTag);
        }
        // A new sender run's key is derived here and kept only if the datagram verifies.
        let derived = match self.senders.get(&run) {
            Some(s) if !s.window.is_fresh(counter) => return Err(Reject::Replayed),
            Some(_) => None,
            None => {
                let slot = self
                    .slots
                    .iter()
                    .find(|s| s.id == run.key_id)
                    .ok_or(Reject::UnknownKey)?;
                Some(slot.datagram_key(run.suite, run.node, run.incarnation, run.salt))
            }
        };
        let key = match &derived {
            Some(k) => k,
            None => &self.senders[&run].key,
        };
        let verified = match run.suite {
            Suite::AuthOnly => key
                .open_in_place_separate_tag(
                    nonce(counter),
                    Aad::from(&bytes[..t + PREFIX_LEN]),
                    Tag::from(tag),
                    &mut [],
                    0..,
                )
                .is_ok(),
            Suite::Encrypted => {
                let mut aad = [0u8; DATAGRAM_HEADER_LEN + PREFIX_LEN];
                aad[..DATAGRAM_HEADER_LEN].copy_from_slice(&bytes[..DATAGRAM_HEADER_LEN]);
                aad[DATAGRAM_HEADER_LEN..].copy_from_slice(&bytes[t..t + PREFIX_LEN]);
                self.scratch[..t].copy_from_slice(&bytes[..t]);
                key.open_in_place_separate_tag(
                    nonce(counter),
                    Aad::from(&aad),
                    Tag::from(tag),
                    &mut self.scratch[DATAGRAM_HEADER_LEN..t],
                    0..,
                )
                .is_ok()
            }
        };
        if !verified {
            return Err(Reject::BadTag);
        }
        self.clock += 1;
        let clock = self.clock;
        match derived {
            None => {
                if let Some(s) = self.senders.get_mut(&run) {
                    s.window.accept(counter);
                    s.last_used = clock;
                }
            }
            Some(key) => {
                if self.senders.len() >= self.max_senders {
                    let oldest = self
                        .senders
                        .iter()
                        .min_by_key(|(_, s)| s.last_used)
                        .map(|(k, _)| *k);
                    if let Some(k) = oldest {
                        self.senders.remove(&k);
                        self.stats.senders_full += 1;
                    }
                }
                let mut window = ReplayWindow::new();
                window.accept(counter);
                self.senders.insert(
                    run,
                    SenderState {
                        key,
                        window,
                        last_used: clock,
                    },
                );
            }
        }
        Ok(match run.suite {
            Suite::AuthOnly => &bytes[..t],
            Suite::Encrypted => &self.scratch[..t],
        })
    }
}

/// The sending half: this run's key, salt and counter.
struct Sealer {
    key: LessSafeKey,
    key_id: u8,
    suite: Suite,
    salt: u64,
    counter: u64,
    /// The last sealed datagram (valid while `last_sealed > 0`).
    buf: Box<[u8]>,
    /// The plaintext of `buf`, and the lengths of both.
    last_plain: Box<[u8]>,
    last_plain_len: usize,
    last_sealed: usize,
    /// Seals saved by sending the last sealed datagram again.
    reused: u64,
}

impl Sealer {
    /// Seals `bytes` into `buf`; returns the sealed length. The same datagram queued to
    /// several peers in a row (a tree fan-out) is sealed once and sent as is to each: the
    /// same bytes under the same nonce, as a duplicate on the network would be.
    fn seal(&mut self, bytes: &[u8], max_datagram: usize) -> Result<usize, SendError> {
        if self.last_sealed > 0 && bytes == &self.last_plain[..self.last_plain_len] {
            self.reused += 1;
            return Ok(self.last_sealed);
        }
        self.last_sealed = 0;
        let sealed = self.seal_new(bytes, max_datagram)?;
        self.last_plain[..bytes.len()].copy_from_slice(bytes);
        self.last_plain_len = bytes.len();
        self.last_sealed = sealed;
        Ok(sealed)
    }

    fn seal_new(&mut self, bytes: &[u8], max_datagram: usize) -> Result<usize, SendError> {
        let len = bytes.len();
        if len + TRAILER_LEN > max_datagram {
            return Err(SendError::TooLarge {
                len,
                max: max_datagram.saturating_sub(TRAILER_LEN),
            });
        }
        if len < DATAGRAM_HEADER_LEN {
            return Err(SendError::Unsealable("shorter than the datagram header"));
        }
        if self.counter == u64::MAX {
            return Err(SendError::Unsealable(
                "packet counter exhausted: restart the daemon",
            ));
        }
        let counter = self.counter;
        // Never reused, even if the inner transport then refuses the datagram.
        self.counter += 1;
        let buf = &mut self.buf;
        buf[..len].copy_from_slice(bytes);
        buf[len] = self.key_id;
        buf[len + 1] = self.suite as u8;
        buf[len + 2..len + 10].copy_from_slice(&self.salt.to_le_bytes());
        buf[len + 10..len + PREFIX_LEN].copy_from_slice(&counter.to_le_bytes());
        let tag = match self.suite {
            Suite::AuthOnly => self.key.seal_in_place_separate_tag(
                nonce(counter),
                Aad::from(&buf[..len + PREFIX_LEN]),
                &mut [],
            ),
            Suite::Encrypted => {
                let mut aad = [0u8; DATAGRAM_HEADER_LEN + PREFIX_LEN];
                aad[..DATAGRAM_HEADER_LEN].copy_from_slice(&buf[..DATAGRAM_HEADER_LEN]);
                aad[DATAGRAM_HEADER_LEN..].copy_from_slice(&buf[len..len + PREFIX_LEN]);
                self.key.seal_in_place_separate_tag(
                    nonce(counter),
                    Aad::from(&aad),
                    &mut buf[DATAGRAM_HEADER_LEN..len],
                )
            }
        }
        .map_err(|_| SendError::Unsealable("AEAD refused the datagram"))?;
        buf[len + PREFIX_LEN..len + TRAILER_LEN].copy_from_slice(tag.as_ref());
        Ok(len + TRAILER_LEN)
    }
}

/// Wraps a transport: seals what is queued, verifies what is received. See the module docs.
pub struct AuthTransport<T: Transport> {
    inner: T,
    max_datagram: usize,
    sealer: Sealer,
    receiver: Receiver,
}

/// A random 64-bit value from the OS (the sender run's salt).
fn random_salt() -> io::Result<u64> {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 8];
    ring::rand::SystemRandom::new()
        .fill(&mut b)
        .map_err(|_| io::Error::other("the OS random source failed"))?;
    Ok(u64::from_le_bytes(b))
}

impl<T: Transport> AuthTransport<T> {
    /// Wraps `inner` (whose `max_datagram` counts the trailer) for node `setup.node`.
    pub fn new(inner: T, setup: &AuthSetup, max_datagram: usize) -> io::Result<AuthTransport<T>> {
        Ok(Self::with_salt(inner, setup, max_datagram, random_salt()?))
    }

    /// As `new` with a given salt (tests: a salt must never repeat with a key in real use).
    pub fn with_salt(inner: T, setup: &AuthSetup, max_datagram: usize, salt: u64) -> AuthTransport<T> {
        Self::with_limits(inner, setup, max_datagram, salt, MAX_AUTH_SENDERS)
    }

    fn with_limits(
        inner: T,
        setup: &AuthSetup,
        max_datagram: usize,
        salt: u64,
        max_senders: usize,
    ) -> AuthTransport<T> {
        let primary = KeySlot::new(&setup.keys.primary);
        let suite = if setup.keys.encrypt {
            Suite::Encrypted
        } else {
            Suite::AuthOnly
        };
        let sealer = Sealer {
            key: primary.datagram_key(suite, setup.node, setup.incarnation, salt),
            key_id: primary.id,
            suite,
            salt,
            counter: 0,
            buf: vec![0; max_datagram].into_boxed_slice(),
            last_plain: vec![0; max_datagram].into_boxed_slice(),
            last_plain_len: 0,
            last_sealed: 0,
            reused: 0,
        };
        let mut slots = vec![primary];
        if let Some(next) = &setup.keys.next {
            slots.push(KeySlot::new(next));
        }
        AuthTransport {
            inner,
            max_datagram,
            sealer,
            receiver: Receiver {
                slots,
                senders: HashMap::new(),
                max_senders,
                clock: 0,
                scratch: vec![0; max_datagram].into_boxed_slice(),
                stats: AuthStats::default(),
                log: RejectLog::default(),
            },
        }
    }

    pub fn inner(&self) -> &T {
        &self.inner
    }

    pub fn inner_mut(&mut self) -> &mut T {
        &mut self.inner
    }

    pub fn auth_stats(&self) -> AuthStats {
        self.stats().auth
    }

    /// Sender runs whose windows are held now.
    pub fn senders(&self) -> usize {
        self.receiver.senders.len()
    }
}

/// Whether two keys would share a key id (the second would never verify anything: make
/// another with `tutti keygen`).
pub fn same_key_id(a: &ClusterKey, b: &ClusterKey) -> bool {
    KeySlot::new(a).id == KeySlot::new(b).id
}

impl<T: Transport> Transport for AuthTransport<T> {
    fn queue(&mut self, to: SocketAddr, bytes: &[u8]) -> Result<(), SendError> {
        let len = self.sealer.seal(bytes, self.max_datagram)?;
        self.inner.queue(to, &self.sealer.buf[..len])?;
        self.receiver.stats.sealed += 1;
        Ok(())
    }

    fn flush(&mut self) -> io::Result<usize> {
        self.inner.flush()
    }

    fn recv(&mut self, max: usize, f: &mut dyn FnMut(SocketAddr, &[u8])) -> io::Result<usize> {
        let AuthTransport { inner, receiver, .. } = self;
        let mut delivered = 0;
        inner.recv(max, &mut |from, bytes| match receiver.open(bytes) {
            Ok(plain) => {
                f(from, plain);
                receiver.stats.verified += 1;
                delivered += 1;
            }
            Err(reason) => {
                match reason {
                    Reject::Replayed => receiver.stats.replayed += 1,
                    _ => receiver.stats.auth_failed += 1,
                }
                receiver.log.note(reason, from, &receiver.stats);
            }
        })?;
        Ok(delivered)
    }

    fn wait(&mut self, timeout: Duration, wake_fd: RawFd) -> io::Result<()> {
        self.inner.wait(timeout, wake_fd)
    }

    fn wake_quiet(&self, wake_fd: RawFd) -> bool {
        self.inner.wake_quiet(wake_fd)
    }

    fn local_addr(&self) -> SocketAddr {
        self.inner.local_addr()
    }

    fn backend(&self) -> &'static str {
        self.inner.backend()
    }

    fn stats(&self) -> NetStats {
        NetStats {
            auth: AuthStats {
                reused: self.sealer.reused,
                ..self.receiver.stats
            },
            ..self.inner.stats()
        }
    }

    fn set_partitioned(&mut self, peers: &[SocketAddr]) -> bool {
        self.inner.set_partitioned(peers)
    }
}

#[cfg(test)]
pub(crate) mod tests_support {
    use super::*;
    use std::collections::VecDeque;

    /// An in-memory transport: what is queued is kept in `sent`; `recv` drains `inbox`.
    #[derive(Default)]
    pub struct Mem {
        pub sent: Vec<Vec<u8>>,
        pub inbox: VecDeque<Vec<u8>>,
    }

    pub const PEER: SocketAddr =
        SocketAddr::V4(std::net::SocketAddrV4::new(std::net::Ipv4Addr::LOCALHOST, 7400));
    pub const MAX: usize = 1472;

    impl Transport for Mem {
        fn queue(&mut self, _to: SocketAddr, bytes: &[u8]) -> Result<(), SendError> {
            self.sent.push(bytes.to_vec());
            Ok(())
        }
        fn flush(&mut self) -> io::Result<usize> {
            Ok(0)
        }
        fn recv(&mut self, max: usize, f: &mut dyn FnMut(SocketAddr, &[u8])) -> io::Result<usize> {
            let mut n = 0;
            while n < max {
                let Some(d) = self.inbox.pop_front() else { break };
                f(PEER, &d);
                n += 1;
            }
            Ok(n)
        }
        fn wait(&mut self, _: Duration, _: RawFd) -> io::Result<()> {
            Ok(())
        }
        fn local_addr(&self) -> SocketAddr {
            PEER
        }
        fn backend(&self) -> &'static str {
            "mem"
        }
        fn stats(&self) -> NetStats {
            NetStats::default()
        }
    }

    pub fn key(n: u8) -> ClusterKey {
        ClusterKey::from_bytes([n; KEY_LEN])
    }

    pub fn setup(node: u32, primary: u8, next: Option<u8>, encrypt: bool) -> AuthSetup {
        AuthSetup {
            keys: AuthKeys {
                primary: key(primary),
                next: next.map(key),
                encrypt,
            },
            node,
            incarnation: 9,
        }
    }

    pub fn endpoint(
        node: u32,
        primary: u8,
        next: Option<u8>,
        encrypt: bool,
        salt: u64,
    ) -> AuthTransport<Mem> {
        AuthTransport::with_salt(Mem::default(), &setup(node, primary, next, encrypt), MAX, salt)
    }

    /// A datagram of `len` bytes from `node` (incarnation 9): a valid header, then a pattern.
    pub fn datagram(node: u32, len: usize, seed: u8) -> Vec<u8> {
        let mut d: Vec<u8> = (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect();
        d[..4].copy_from_slice(&MAGIC.to_le_bytes());
        d[8..12].copy_from_slice(&node.to_le_bytes());
        d[12..16].copy_from_slice(&9u32.to_le_bytes());
        d
    }

    /// Seals `plain` at `from` and returns the sealed bytes.
    pub fn seal(from: &mut AuthTransport<Mem>, plain: &[u8]) -> Vec<u8> {
        from.queue(PEER, plain).unwrap();
        from.inner_mut().sent.pop().unwrap()
    }

    /// Hands `sealed` to `to`; returns what it delivered.
    pub fn deliver(to: &mut AuthTransport<Mem>, sealed: &[u8]) -> Vec<Vec<u8>> {
        to.inner_mut().inbox.push_back(sealed.to_vec());
        let mut got = Vec::new();
        to.recv(64, &mut |_, b| got.push(b.to_vec())).unwrap();
        got
    }
}

#[cfg(test)]
mod tests {
    use super::tests_support::*;
    use super::*;

    #[test]
    fn seal_then_open_gives_the_datagram_back_in_both_suites() {
        for encrypt in [false, true] {
            let mut a = endpoint(1, 7, None, encrypt, 11);
            let mut b = endpoint(2, 7, None, encrypt, 22);
            let plain = datagram(1, 1400, 3);
            let sealed = seal(&mut a, &plain);
            assert_eq!(sealed.len(), plain.len() + TRAILER_LEN);
            assert_eq!(
                sealed[..DATAGRAM_HEADER_LEN],
                plain[..DATAGRAM_HEADER_LEN],
                "header in clear"
            );
            assert_eq!(
                sealed[DATAGRAM_HEADER_LEN..1400] == plain[DATAGRAM_HEADER_LEN..],
                !encrypt,
                "the body is readable exactly when not encrypted"
            );
            assert_eq!(deliver(&mut b, &sealed), vec![plain.clone()]);
            let s = b.stats().auth;
            assert_eq!((s.verified, s.auth_failed, s.replayed), (1, 0, 0));
            assert_eq!(a.stats().auth.sealed, 1);
        }
    }

    #[test]
    fn a_flipped_bit_anywhere_is_rejected_and_counted() {
        for encrypt in [false, true] {
            let mut a = endpoint(1, 7, None, encrypt, 11);
            let mut b = endpoint(2, 7, None, encrypt, 22);
            let plain = datagram(1, 200, 5);
            let sealed = seal(&mut a, &plain);
            let mut flips = 0;
            for at in 0..sealed.len() {
                for bit in [0, 3, 7] {
                    let mut bad = sealed.clone();
                    bad[at] ^= 1 << bit;
                    assert!(
                        deliver(&mut b, &bad).is_empty(),
                        "flip of bit {bit} at {at} got through"
                    );
                    flips += 1;
                }
            }
            assert_eq!(b.stats().auth.auth_failed, flips);
            assert_eq!(b.senders(), 0, "a forgery creates no sender state");
            // The genuine datagram still verifies afterwards.
            assert_eq!(deliver(&mut b, &sealed), vec![plain]);
        }
    }

    #[test]
    fn the_same_datagram_to_several_peers_is_sealed_once_and_each_peer_takes_it_once() {
        for encrypt in [false, true] {
            let mut a = endpoint(1, 7, None, encrypt, 11);
            let (mut b, mut c) = (
                endpoint(2, 7, None, encrypt, 22),
                endpoint(3, 7, None, encrypt, 33),
            );
            let plain = datagram(1, 500, 1);
            let to_b = seal(&mut a, &plain);
            let to_c = seal(&mut a, &plain);
            assert_eq!(to_b, to_c);
            assert_eq!(a.stats().auth.reused, 1);
            let other = seal(&mut a, &datagram(1, 500, 2));
            assert_ne!(other[500..], to_b[500..], "a new datagram, a new counter");
            let again = seal(&mut a, &plain);
            assert_ne!(again, to_b, "not the last one sealed: sealed afresh");
            assert_eq!(deliver(&mut b, &to_b), vec![plain.clone()]);
            assert_eq!(deliver(&mut c, &to_c), vec![plain.clone()]);
            assert!(
                deliver(&mut b, &to_c).is_empty(),
                "the copy for c is a replay at b"
            );
            assert_eq!(deliver(&mut b, &again), vec![plain.clone()]);
        }
    }

    #[test]
    fn truncated_datagrams_are_rejected() {
        let mut a = endpoint(1, 7, None, false, 11);
        let mut b = endpoint(2, 7, None, false, 22);
        let sealed = seal(&mut a, &datagram(1, 300, 1));
        for len in 0..sealed.len() {
            assert!(deliver(&mut b, &sealed[..len]).is_empty(), "truncated to {len}");
        }
        assert_eq!(b.stats().auth.auth_failed, sealed.len() as u64);
        // Also a datagram of garbage, and one with a trailer but the wrong magic.
        assert!(deliver(&mut b, &[0xAB; 100]).is_empty());
        assert_eq!(b.stats().auth.verified, 0);
    }

    #[test]
    fn another_key_is_rejected() {
        for encrypt in [false, true] {
            let mut a = endpoint(1, 7, None, encrypt, 11);
            let mut b = endpoint(2, 8, None, encrypt, 22);
            assert!(deliver(&mut b, &seal(&mut a, &datagram(1, 100, 0))).is_empty());
            assert_eq!(b.stats().auth.auth_failed, 1);
        }
    }

    #[test]
    fn a_receiver_accepts_both_suites() {
        // `encrypt` can change by a rolling restart.
        let mut plain_sender = endpoint(1, 7, None, false, 11);
        let mut secret_sender = endpoint(3, 7, None, true, 33);
        let mut b = endpoint(2, 7, None, true, 22);
        assert_eq!(
            deliver(&mut b, &seal(&mut plain_sender, &datagram(1, 80, 0))).len(),
            1
        );
        assert_eq!(
            deliver(&mut b, &seal(&mut secret_sender, &datagram(3, 80, 0))).len(),
            1
        );
    }

    #[test]
    fn replays_inside_and_outside_the_window_are_dropped() {
        let mut a = endpoint(1, 7, None, false, 11);
        let mut b = endpoint(2, 7, None, false, 22);
        let sealed: Vec<Vec<u8>> = (0..1100)
            .map(|i| seal(&mut a, &datagram(1, 64, i as u8)))
            .collect();
        assert_eq!(deliver(&mut b, &sealed[5]).len(), 1);
        assert!(deliver(&mut b, &sealed[5]).is_empty(), "the same datagram twice");
        assert_eq!(
            deliver(&mut b, &sealed[3]).len(),
            1,
            "reordered, within the window"
        );
        assert_eq!(deliver(&mut b, &sealed[1099]).len(), 1, "a jump ahead");
        assert!(
            deliver(&mut b, &sealed[3]).is_empty(),
            "seen, now out of the window"
        );
        assert!(
            deliver(&mut b, &sealed[10]).is_empty(),
            "never seen but too old (1089 behind)"
        );
        assert_eq!(
            deliver(&mut b, &sealed[100]).len(),
            1,
            "999 behind: still in the window"
        );
        assert!(deliver(&mut b, &sealed[100]).is_empty());
        assert!(deliver(&mut b, &sealed[1099]).is_empty());
        let s = b.stats().auth;
        assert_eq!((s.verified, s.replayed, s.auth_failed), (4, 5, 0));
    }

    #[test]
    fn a_restarted_sender_is_a_new_run_with_its_own_window() {
        let mut b = endpoint(2, 7, None, false, 22);
        let mut first = endpoint(1, 7, None, false, 11);
        let mut second = endpoint(1, 7, None, false, 12);
        // Both start at counter 0: distinct salts, distinct keys and windows.
        assert_eq!(deliver(&mut b, &seal(&mut first, &datagram(1, 64, 0))).len(), 1);
        assert_eq!(deliver(&mut b, &seal(&mut second, &datagram(1, 64, 0))).len(), 1);
        assert_eq!(b.senders(), 2);
    }

    #[test]
    fn rotation_accepts_the_next_key_and_sends_with_the_primary() {
        // Step 1: everyone has K7 primary and K8 next. Step 2: some swapped to K8 primary.
        let mut old = endpoint(1, 7, Some(8), false, 11);
        let mut new = endpoint(3, 8, Some(7), false, 33);
        let mut only_new = endpoint(4, 8, None, false, 44);
        let from_old = seal(&mut old, &datagram(1, 64, 0));
        let from_new = seal(&mut new, &datagram(3, 64, 0));
        assert_eq!(deliver(&mut new, &from_old).len(), 1, "K7 accepted as next key");
        assert_eq!(deliver(&mut old, &from_new).len(), 1, "K8 accepted as next key");
        assert!(
            deliver(&mut only_new, &from_old).is_empty(),
            "K7 retired: refused"
        );
        assert_eq!(deliver(&mut only_new, &from_new).len(), 1);
        assert!(!same_key_id(&key(7), &key(8)));
        assert!(same_key_id(&key(7), &key(7)));
    }

    #[test]
    fn a_full_sender_table_evicts_the_least_recently_heard() {
        let mut b = AuthTransport::with_limits(Mem::default(), &setup(2, 7, None, false), MAX, 22, 2);
        let mut senders: Vec<AuthTransport<Mem>> = (0..3)
            .map(|i| endpoint(10 + i, 7, None, false, i.into()))
            .collect();
        let first = seal(&mut senders[0], &datagram(10, 64, 0));
        assert_eq!(deliver(&mut b, &first).len(), 1);
        assert_eq!(
            deliver(&mut b, &seal(&mut senders[1], &datagram(11, 64, 0))).len(),
            1
        );
        assert_eq!(b.stats().auth.senders_full, 0);
        assert_eq!(
            deliver(&mut b, &seal(&mut senders[2], &datagram(12, 64, 0))).len(),
            1
        );
        assert_eq!(b.stats().auth.senders_full, 1);
        assert_eq!(b.senders(), 2, "bounded");
        // Sender 10 was evicted: its window went with it (documented: the table bounds memory).
        assert_eq!(deliver(&mut b, &first).len(), 1);
        assert_eq!(b.stats().auth.senders_full, 2);
    }

    #[test]
    fn too_large_and_headerless_datagrams_are_refused_on_send() {
        let mut a = endpoint(1, 7, None, false, 11);
        assert_eq!(
            a.queue(PEER, &datagram(1, MAX - TRAILER_LEN + 1, 0)),
            Err(SendError::TooLarge {
                len: MAX - TRAILER_LEN + 1,
                max: MAX - TRAILER_LEN
            })
        );
        assert!(a.queue(PEER, &datagram(1, MAX - TRAILER_LEN, 0)).is_ok());
        assert!(matches!(a.queue(PEER, &[1, 2, 3]), Err(SendError::Unsealable(_))));
    }

    #[test]
    fn replay_window_slides_and_clears() {
        let mut w = ReplayWindow::new();
        assert!(w.is_fresh(0));
        w.accept(0);
        assert!(!w.is_fresh(0));
        w.accept(2);
        assert!(w.is_fresh(1));
        w.accept(REPLAY_WINDOW + 1);
        assert!(!w.is_fresh(1), "1 is now older than the window");
        assert!(w.is_fresh(3), "3 is in the window and unseen");
        assert!(!w.is_fresh(REPLAY_WINDOW + 1));
        w.accept(10 * REPLAY_WINDOW);
        assert!(w.is_fresh(9 * REPLAY_WINDOW + 1));
        assert!(!w.is_fresh(9 * REPLAY_WINDOW));
    }

    #[test]
    fn key_files_are_checked_for_permissions_and_format() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("tutti-auth-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("cluster.key");
        let text = tutti_wire::cluster_key::encode_key(&[5; KEY_LEN]);
        std::fs::write(&path, &text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = ClusterKey::load(&path).unwrap_err().to_string();
        assert!(
            e.contains(&path.display().to_string()) && e.contains("chmod 600"),
            "{e}"
        );
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(ClusterKey::load(&path).unwrap().bytes, [5; KEY_LEN]);
        std::fs::write(&path, "abc\n").unwrap();
        let e = ClusterKey::load(&path).unwrap_err().to_string();
        assert!(
            e.contains("64 hexadecimal digits") && e.contains("tutti keygen"),
            "{e}"
        );
        let e = ClusterKey::load(&dir.join("missing.key"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing.key"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

#[cfg(test)]
mod cost {
    //! `cargo test --release -p tutti-daemon --lib net::auth::cost -- --ignored --nocapture`:
    //! the per-datagram cost of sealing and opening 1,400-byte datagrams (a figure, not a test
    //! of speed: it asserts only that every datagram verified).
    use super::tests_support::*;
    use super::*;

    #[test]
    #[ignore]
    fn seal_and_open_cost_per_datagram() {
        const N: usize = 100_000;
        for encrypt in [false, true] {
            let mut a = endpoint(1, 7, None, encrypt, 11);
            let mut b = endpoint(2, 7, None, encrypt, 22);
            let plain = datagram(1, 1400, 3);
            let start = Instant::now();
            for _ in 0..N {
                std::hint::black_box(a.sealer.seal_new(&plain, MAX).unwrap());
            }
            let seal = start.elapsed();
            let sealed: Vec<Vec<u8>> = (0..N)
                .map(|_| {
                    let len = a.sealer.seal_new(&plain, MAX).unwrap();
                    a.sealer.buf[..len].to_vec()
                })
                .collect();
            let start = Instant::now();
            for d in &sealed {
                assert!(b.receiver.open(d).is_ok());
            }
            let open = start.elapsed();
            eprintln!(
                "encrypt = {encrypt}: seal {:.0} ns, open {:.0} ns per 1,400-byte datagram",
                seal.as_nanos() as f64 / N as f64,
                open.as_nanos() as f64 / N as f64
            );
        }
    }
}

#[cfg(test)]
mod untrusted {
    use super::tests_support::*;
    use proptest::prelude::*;

    proptest! {
        /// Arbitrary bytes, or a genuine datagram with bytes overwritten, cut or appended:
        /// never a panic, never accepted unless it is the genuine datagram unchanged.
        #[test]
        fn arbitrary_and_mutated_datagrams_are_refused_without_panic(
            junk in proptest::collection::vec(any::<u8>(), 0..300),
            edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..4),
            cut in any::<usize>(),
            encrypt in any::<bool>(),
        ) {
            let mut a = endpoint(1, 7, None, encrypt, 11);
            let mut b = endpoint(2, 7, None, encrypt, 22);
            prop_assert!(deliver(&mut b, &junk).is_empty());
            let plain = datagram(1, 120, 9);
            let sealed = seal(&mut a, &plain);
            // A known sender run first, so forgeries also meet an existing window.
            let known = seal(&mut a, &datagram(1, 60, 1));
            prop_assert_eq!(deliver(&mut b, &known).len(), 1);
            let mut bad = sealed.clone();
            for (at, v) in &edits {
                let at = at % bad.len();
                bad[at] = *v;
            }
            bad.truncate(cut % (bad.len() + 1));
            let got = deliver(&mut b, &bad);
            if bad == sealed {
                prop_assert_eq!(got, vec![plain]);
            } else {
                prop_assert!(got.is_empty());
            }
        }
    }
}
