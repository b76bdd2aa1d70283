//! The `[net]` settings: where each shard's UDP socket listens, which I/O back end drives
//! it, how large its batches and buffers are, and the optional fault injection used to
//! test the protocols over a bad network on a real host.

use serde::Deserialize;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

/// Largest UDP payload over IPv4 (65535 - 20 bytes IP - 8 bytes UDP).
pub const MAX_UDP_PAYLOAD: usize = 65_507;
/// Most datagrams one `sendmmsg`/`recvmmsg` call or one submission batch may carry
/// (the kernel's UIO_MAXIOV is 1024; beyond a few hundred nothing is gained).
pub const MAX_BATCH: usize = 1024;

/// Which kernel interface moves the datagrams.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum IoMode {
    /// io_uring when the kernel allows it, else epoll (the log says why).
    #[default]
    Auto,
    /// io_uring only: fail to start when the kernel refuses it.
    Uring,
    /// epoll with `recvmmsg`/`sendmmsg`.
    Epoll,
}

/// The daemon's UDP transport settings (`[net]` in the config file).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NetConfig {
    /// Address the shards' UDP sockets bind to (IPv4 or IPv6).
    pub listen: IpAddr,
    /// Shard `i` listens on `base_port + i`. 0 = an ephemeral port for every shard (tests).
    pub base_port: u16,
    /// `auto` (io_uring, else epoll), `uring` or `epoll`.
    pub io: IoMode,
    /// Datagrams per `sendmmsg`/`recvmmsg` call or per submission batch. The send queue
    /// holds four batches; the receive pool holds four batches (io_uring) or one (epoll).
    pub batch: usize,
    /// Largest datagram payload sent or received, in bytes; larger ones are refused on
    /// send and counted and dropped on receive. 1472 fits a 1500-byte MTU; at most 65507.
    pub max_datagram: usize,
    /// SO_RCVBUF and SO_SNDBUF asked for, in bytes. The kernel caps them at
    /// `net.core.rmem_max` / `wmem_max` (the log says so); as root, SO_*BUFFORCE is tried.
    /// 16 MiB by default: at 2-3 M msg/s a receiving shard kept from its core for ~10 ms
    /// (2 shared vCPUs) overflowed 4 MiB, and the repair that followed deepened the overload
    /// (README, "Overload collapse"); a larger buffer rides out such stalls, it does not
    /// replace flow control.
    pub socket_buffer_bytes: usize,
    /// SO_BUSY_POLL in microseconds (the kernel spins this long in a receive before
    /// sleeping); 0 = off. Raising it may need CAP_NET_ADMIN (refusal is logged, not fatal).
    pub busy_poll_us: u32,
    /// io_uring only: a kernel thread polls the submission queue, so sends need no system
    /// call while it is awake. Costs a core; falls back to normal submission if refused.
    pub sqpoll: bool,
    /// io_uring only: send runs of datagrams to one peer as one `UDP_SEGMENT` send (generic
    /// segmentation offload): the kernel's per-datagram send work is paid once per run of up
    /// to 64. Turned off by itself (logged) if the kernel refuses it.
    pub gso: bool,
    /// io_uring only: receive with `UDP_GRO` (generic receive offload): a segmentation-offload
    /// send from a peer arrives as one large receive, cut into its datagrams by the segment
    /// size the kernel reports, instead of being cut by the kernel and received datagram by
    /// datagram. Costs 64 KiB receive buffers (fewer of them). Turned off by itself (logged)
    /// if the kernel refuses it.
    pub gro: bool,
    /// Fault injection, for testing on a real host; off by default.
    pub fault: FaultConfig,
}

impl Default for NetConfig {
    fn default() -> Self {
        NetConfig {
            listen: IpAddr::V4(Ipv4Addr::LOCALHOST),
            base_port: 7400,
            io: IoMode::Auto,
            batch: 64,
            max_datagram: 1472,
            socket_buffer_bytes: 16 << 20,
            busy_poll_us: 0,
            sqpoll: false,
            gso: true,
            gro: true,
            fault: FaultConfig::default(),
        }
    }
}

impl NetConfig {
    /// Checks every value whose type alone does not make it valid.
    pub fn validate(&self) -> Result<(), String> {
        if !(1..=MAX_BATCH).contains(&self.batch) {
            return Err(format!(
                "net.batch = {}: must be from 1 to {MAX_BATCH}",
                self.batch
            ));
        }
        if !(1..=MAX_UDP_PAYLOAD).contains(&self.max_datagram) {
            return Err(format!(
                "net.max_datagram = {}: must be from 1 to {MAX_UDP_PAYLOAD}",
                self.max_datagram
            ));
        }
        if self.socket_buffer_bytes > i32::MAX as usize {
            return Err(format!(
                "net.socket_buffer_bytes = {}: must be below 2 GiB",
                self.socket_buffer_bytes
            ));
        }
        self.fault.validate()
    }

    /// The address shard `shard` binds to.
    pub fn shard_addr(&self, shard: usize) -> Result<SocketAddr, String> {
        if self.base_port == 0 {
            return Ok(SocketAddr::new(self.listen, 0));
        }
        let port = (self.base_port as usize)
            .checked_add(shard)
            .filter(|&p| p <= u16::MAX as usize)
            .ok_or_else(|| format!("net.base_port = {} + shard {shard} exceeds 65535", self.base_port))?;
        Ok(SocketAddr::new(self.listen, port as u16))
    }
}

/// Faults injected between the shard and its socket (`[net.fault]`). All probabilities
/// are per datagram, drawn from a PRNG seeded with `seed`, so a run's choices repeat.
#[derive(Debug, Clone, PartialEq, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct FaultConfig {
    /// Probability that an outgoing datagram is dropped (0.0 to 1.0).
    pub loss: f64,
    /// Probability that an incoming datagram is dropped (0.0 to 1.0).
    pub loss_incoming: f64,
    /// Probability that an outgoing datagram is sent twice (0.0 to 1.0).
    pub duplicate: f64,
    /// Fixed extra delay of every outgoing datagram, in microseconds (0 = none).
    pub delay_us: u64,
    /// Uniform random extra delay on top of `delay_us`, 0 to this many microseconds;
    /// it reorders datagrams.
    pub jitter_us: u64,
    /// Probability that an incoming datagram has one bit flipped (0.0 to 1.0). Without a
    /// cluster key the protocol then reads corrupted bytes (UDP's checksum normally stops
    /// them); with one, authentication rejects them.
    pub corrupt: f64,
    /// Probability that an incoming datagram is cut short at a random length (0.0 to 1.0).
    pub truncate: f64,
    /// Probability that, after an incoming datagram, one received earlier (of the last 64)
    /// is delivered again (0.0 to 1.0): a replay.
    pub replay: f64,
    /// PRNG seed; the same seed and traffic give the same faults.
    pub seed: u64,
    /// Peers whose traffic is dropped both ways ("ip:port"; port 0 = every port of
    /// that address). Changeable at run time.
    pub partition: Vec<SocketAddr>,
}

impl FaultConfig {
    /// Whether any fault is configured (if not, the transport is not wrapped at all).
    pub fn is_active(&self) -> bool {
        self.loss > 0.0
            || self.loss_incoming > 0.0
            || self.duplicate > 0.0
            || self.delay_us > 0
            || self.jitter_us > 0
            || self.corrupt > 0.0
            || self.truncate > 0.0
            || self.replay > 0.0
            || !self.partition.is_empty()
    }

    pub fn validate(&self) -> Result<(), String> {
        for (key, p) in [
            ("loss", self.loss),
            ("loss_incoming", self.loss_incoming),
            ("duplicate", self.duplicate),
            ("corrupt", self.corrupt),
            ("truncate", self.truncate),
            ("replay", self.replay),
        ] {
            if !(0.0..=1.0).contains(&p) {
                return Err(format!("net.fault.{key} = {p}: must be from 0.0 to 1.0"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_unknown_keys() {
        let c: NetConfig = toml::from_str("").unwrap();
        assert_eq!(c, NetConfig::default());
        assert!(!c.fault.is_active());
        let e = toml::from_str::<NetConfig>("batchh = 3").unwrap_err().to_string();
        assert!(e.contains("batchh"), "{e}");
        let c: NetConfig = toml::from_str(
            "listen = \"127.0.0.2\"\nio = \"epoll\"\n[fault]\nloss = 0.1\npartition = [\"127.0.0.3:0\"]\n",
        )
        .unwrap();
        assert_eq!(c.io, IoMode::Epoll);
        assert!(c.fault.is_active());
        assert_eq!(c.shard_addr(2).unwrap(), "127.0.0.2:7402".parse().unwrap());
    }

    #[test]
    fn bad_values_are_named() {
        let c = NetConfig {
            max_datagram: 70_000,
            ..NetConfig::default()
        };
        assert!(c.validate().unwrap_err().contains("max_datagram"));
        let mut c = NetConfig::default();
        c.fault.loss = 1.5;
        assert!(c.validate().unwrap_err().contains("loss"));
        let c = NetConfig {
            base_port: 65535,
            ..NetConfig::default()
        };
        assert!(c.shard_addr(1).unwrap_err().contains("base_port"));
    }
}
