//! tuttid's settings: one TOML file, every key with a default that runs a single-node
//! daemon, and command-line flags that override the common ones. A bad file is an error
//! that names the key.

use crate::access::{AccessRule, LimitsConfig};
use crate::cluster::{ClusterConfig, MAX_CLUSTER_SHARDS, MAX_DAEMON_ID};
use crate::net::NetConfig;
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// How a shard waits when it has no work (as Aeron's idle strategies).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum IdleStrategy {
    /// Busy-poll forever: lowest latency, one core at 100%.
    Spin,
    /// Spin for `spin_after_data_us` after data (no yields), then park on the shard's
    /// eventfd (and socket) until a client rings the doorbell or a datagram comes: about 0%
    /// CPU when idle, microseconds (not milliseconds) to wake.
    #[default]
    Backoff,
}

impl std::str::FromStr for IdleStrategy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "spin" => Ok(IdleStrategy::Spin),
            "backoff" => Ok(IdleStrategy::Backoff),
            other => Err(format!(
                "unknown idle strategy {other:?} (expected \"spin\" or \"backoff\")"
            )),
        }
    }
}

/// How long a `backoff` shard spins after data by default, in microseconds.
pub const DEFAULT_SPIN_AFTER_DATA_US: u64 = 5;
/// Longest `spin_after_data_us` a config may ask for (beyond it, use `idle = "spin"`).
pub const MAX_SPIN_AFTER_DATA_US: u64 = 100_000;

/// Longest `cpu_poll_after_data_ms` a config may ask for.
pub const MAX_CPU_POLL_AFTER_DATA_MS: u64 = 3_600_000;

/// Largest message by default (when the rings are large enough).
pub const DEFAULT_MAX_MESSAGE: usize = 1 << 20;
/// Smallest and largest ring a setting may ask for.
pub const MIN_RING_BYTES: usize = 64 * 1024;
pub const MAX_RING_BYTES: usize = 1 << 30;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// This daemon's id in the cluster (the high half of every sender id it stamps), from 1
    /// to 2^24-1. Unset or 0: 1 on a single host; in a cluster, derived at start (see
    /// `cluster::derive_daemon_id`: the low 24 bits of an IPv4 `net.listen`, else a random
    /// id kept in `cluster.state_dir`).
    pub node_id: u32,
    /// Control socket path; unset = `$TUTTI_SOCKET`, `$XDG_RUNTIME_DIR/tutti/tuttid.sock`,
    /// `/run/tutti/tuttid.sock` (root) or `/tmp/tutti-$USER/tuttid.sock`.
    pub socket: Option<PathBuf>,
    /// One shard per listed core, each pinned to it. Empty = one shard on the last core
    /// (core 0 usually takes most interrupts).
    pub cores: Vec<usize>,
    /// Do not pin shards (for containers whose CPU set is managed elsewhere).
    pub no_pin: bool,
    pub idle: IdleStrategy,
    /// With `idle = "backoff"`: how long a shard keeps polling (spinning, no yields) after
    /// its last data (a frame from a client, a message for a local group) before it parks.
    /// A message that comes within it is taken without a wake-up; a shard with no data for
    /// this long parks, so an idle daemon costs about nothing. Longer: lower latency for
    /// traffic sparser than one message per this interval, more CPU while such traffic
    /// lasts, taken from whatever else needs the core on a host with fewer cores than busy
    /// threads. 0: park at once. While the last 8 spins caught nothing (one message in
    /// flight: the next comes a round trip later) the shard parks at once too, spinning
    /// again every 16th time (counter `spins_skipped`). The README ("The spin after data
    /// as a setting", "Idle CPUs that poll") has the figures.
    pub spin_after_data_us: u64,
    /// After data, ask the kernel to keep idle CPUs polling instead of halting for this
    /// long (milliseconds): each shard holds a request for a wake-up latency of 0 on
    /// `/dev/cpu_dma_latency` (the kernel's CPU latency QoS, as tuned's latency-performance
    /// profile does for good) from its first park after data until it has had no data for
    /// this long. A thread woken on an idle CPU (a subscriber, the next daemon's shard)
    /// then runs at once instead of after the CPU wakes, which on a virtual machine that
    /// halts idle vCPUs (`tutti tune check`: `cpu.guest_halt_poll`) is tens of
    /// microseconds per hop. The cost is the idle CPUs' time while traffic lasts (a VM's
    /// vCPUs keep their host cores busy), none when idle. 0 (the default): never. Needs
    /// write access to the device (root, or a udev rule); without it the shard counts
    /// `cpu_poll_refused` and runs on. The README ("Idle CPUs that poll") has the figures.
    pub cpu_poll_after_data_ms: u64,
    /// Bytes of each client's publish ring, per shard it publishes to. Power of two. The
    /// largest message is half of it, less 8 bytes.
    pub publish_ring_bytes: usize,
    /// Bytes of each group's delivery log. Power of two. A subscriber that falls this far
    /// behind gets `Lagged` and skips ahead.
    pub log_bytes: usize,
    /// Largest message a client may publish (`TooLarge` above it). Unset: 1 MiB, or less if
    /// the rings are too small for it. Messages larger than one datagram are fragmented
    /// between daemons and delivered whole or reported lost.
    pub max_message_bytes: Option<usize>,
    /// Most attached clients; more are refused with a clear error.
    pub max_clients: usize,
    /// Most groups alive at once on this daemon.
    pub max_groups: usize,
    /// Users (besides root, the daemon's own user and members of its group) allowed to attach.
    pub allow_uids: Vec<u32>,
    /// Log filter (tracing's env-filter syntax), overridden by `RUST_LOG`.
    pub log: String,
    /// Cluster membership and bimodal multicast between daemons (off by default).
    pub cluster: ClusterConfig,
    /// UDP transport of the cluster.
    pub net: NetConfig,
    // ---- Local security (access lists, control socket permissions, resource limits;
    // `crate::access`). Top-level keys so that unknown ones are still refused by name.
    /// Permission bits of the control socket, octal (`"0660"`). Who may attach is still
    /// checked with SO_PEERCRED; this keeps others from even connecting.
    pub socket_mode: String,
    /// Group of the control socket (a name or a number); unset = the daemon's group. The
    /// daemon must be a member of it (or root).
    pub socket_group: Option<String>,
    /// Per-group access lists (`[[access]]`); none = anyone who may attach may join any
    /// group with any right.
    pub access: Vec<AccessRule>,
    /// Per-user and per-client bounds (`[limits]`).
    pub limits: LimitsConfig,
    // ---- end of local security
}

impl Default for Config {
    fn default() -> Self {
        Config {
            node_id: 0,
            socket: None,
            cores: Vec::new(),
            no_pin: false,
            idle: IdleStrategy::Backoff,
            spin_after_data_us: DEFAULT_SPIN_AFTER_DATA_US,
            cpu_poll_after_data_ms: 0,
            publish_ring_bytes: 4 << 20,
            log_bytes: 8 << 20,
            max_message_bytes: None,
            max_clients: 1024,
            max_groups: 4096,
            allow_uids: Vec::new(),
            log: "info".to_string(),
            cluster: ClusterConfig::default(),
            net: NetConfig::default(),
            socket_mode: "0770".into(),
            socket_group: None,
            access: Vec::new(),
            limits: LimitsConfig::default(),
        }
    }
}

impl Config {
    /// Reads and validates a TOML file.
    pub fn load(path: &Path) -> Result<Config, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read config {}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| format!("config {}: {e}", path.display()))
    }

    /// Parses and validates TOML text.
    pub fn parse(text: &str) -> Result<Config, String> {
        let config: Config = toml::from_str(text).map_err(|e| e.to_string())?;
        config.validate()?;
        Ok(config)
    }

    /// Checks every value whose type alone does not make it valid.
    pub fn validate(&self) -> Result<(), String> {
        for (key, value) in [
            ("publish_ring_bytes", self.publish_ring_bytes),
            ("log_bytes", self.log_bytes),
        ] {
            if !value.is_power_of_two() || !(MIN_RING_BYTES..=MAX_RING_BYTES).contains(&value) {
                return Err(format!(
                    "{key} = {value}: must be a power of two from {MIN_RING_BYTES} to {MAX_RING_BYTES}"
                ));
            }
        }
        if self.spin_after_data_us > MAX_SPIN_AFTER_DATA_US {
            return Err(format!(
                "spin_after_data_us = {}: at most {MAX_SPIN_AFTER_DATA_US} (for a shard that never parks, idle = \"spin\")",
                self.spin_after_data_us
            ));
        }
        if self.cpu_poll_after_data_ms > MAX_CPU_POLL_AFTER_DATA_MS {
            return Err(format!(
                "cpu_poll_after_data_ms = {}: at most {MAX_CPU_POLL_AFTER_DATA_MS} (an hour)",
                self.cpu_poll_after_data_ms
            ));
        }
        if self.max_clients == 0 || self.max_groups == 0 {
            return Err("max_clients and max_groups must be at least 1".into());
        }
        if let Some(max) = self.max_message_bytes {
            if max == 0 || max > self.ring_message_limit() {
                return Err(format!(
                    "max_message_bytes = {max}: must be from 1 to {} (half of publish_ring_bytes and of log_bytes, less headers): raise the ring sizes or lower it",
                    self.ring_message_limit()
                ));
            }
        }
        self.cluster.validate()?;
        self.net.validate()?;
        crate::access::parse_socket_mode(&self.socket_mode)?;
        if let Some(group) = &self.socket_group {
            crate::access::resolve_group(group).map_err(|e| format!("socket_group: {e}"))?;
        }
        crate::access::AccessPolicy::new(&self.access)?;
        self.limits.validate()?;
        if self.cluster.enabled && self.node_id > MAX_DAEMON_ID {
            return Err(format!(
                "node_id = {}: at most {MAX_DAEMON_ID} in a cluster",
                self.node_id
            ));
        }
        if self.cluster.enabled && self.shard_cores().len() > MAX_CLUSTER_SHARDS {
            return Err(format!("cores: at most {MAX_CLUSTER_SHARDS} shards in a cluster"));
        }
        let mut seen = self.cores.clone();
        seen.sort_unstable();
        seen.dedup();
        if seen.len() != self.cores.len() {
            return Err(format!("cores = {:?}: a core is listed twice", self.cores));
        }
        Ok(())
    }

    /// Keys (other than `log`, the access lists and the limits, which SIGHUP applies) whose
    /// value differs in `new`: they apply only on restart.
    pub fn keys_needing_restart(&self, new: &Config) -> Vec<&'static str> {
        let mut keys = Vec::new();
        macro_rules! cmp {
            ($($field:ident),*) => {$(
                if self.$field != new.$field {
                    keys.push(stringify!($field));
                }
            )*};
        }
        // An unset id (0) keeps the one derived at start: a restart derives the same.
        if new.node_id != 0 && self.node_id != new.node_id {
            keys.push("node_id");
        }
        cmp!(
            socket,
            cores,
            no_pin,
            idle,
            spin_after_data_us,
            cpu_poll_after_data_ms,
            publish_ring_bytes,
            log_bytes,
            max_clients,
            max_groups,
            max_message_bytes,
            allow_uids,
            cluster,
            net
        );
        if self.socket_mode != new.socket_mode {
            keys.push("socket_mode");
        }
        if self.socket_group != new.socket_group {
            keys.push("socket_group");
        }
        keys
    }

    /// The largest message both rings can carry.
    fn ring_message_limit(&self) -> usize {
        tutti_wire::shm::PublishRing::max_payload(self.publish_ring_bytes)
            .min(tutti_wire::shm::DeliveryLog::max_payload(self.log_bytes))
    }

    /// The largest message clients may publish.
    pub fn max_message(&self) -> usize {
        self.max_message_bytes
            .unwrap_or(DEFAULT_MAX_MESSAGE.min(self.ring_message_limit()))
    }

    /// The control socket path this config resolves to.
    pub fn socket_path(&self) -> PathBuf {
        self.socket.clone().unwrap_or_else(tutti_sys::default_socket_path)
    }

    /// How long a `backoff` shard spins after data.
    pub fn spin_after_data(&self) -> std::time::Duration {
        std::time::Duration::from_micros(self.spin_after_data_us)
    }

    /// How long shards keep idle CPUs polling after data (zero: never).
    pub fn cpu_poll_after_data(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.cpu_poll_after_data_ms)
    }

    /// The cores shards run on, one shard each.
    pub fn shard_cores(&self) -> Vec<usize> {
        if !self.cores.is_empty() {
            return self.cores.clone();
        }
        let n = std::thread::available_parallelism().map_or(1, |n| n.get());
        vec![n - 1]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spin_after_data_is_a_bounded_setting() {
        assert_eq!(
            Config::parse("").unwrap().spin_after_data_us,
            DEFAULT_SPIN_AFTER_DATA_US
        );
        let c = Config::parse("spin_after_data_us = 200").unwrap();
        assert_eq!(c.spin_after_data(), std::time::Duration::from_micros(200));
        assert_eq!(
            Config::parse("spin_after_data_us = 0")
                .unwrap()
                .spin_after_data_us,
            0
        );
        let e = Config::parse("spin_after_data_us = 100001").unwrap_err();
        assert!(
            e.contains("spin_after_data_us = 100001") && e.contains("idle = \"spin\""),
            "{e}"
        );
        let e = Config::parse("spin_after_data_us = -1").unwrap_err();
        assert!(e.contains("spin_after_data_us"), "{e}");
        let d = Config::default();
        assert_eq!(d.keys_needing_restart(&c), vec!["spin_after_data_us"]);
    }

    #[test]
    fn cpu_poll_after_data_is_off_by_default_and_bounded() {
        let d = Config::parse("").unwrap();
        assert_eq!(d.cpu_poll_after_data(), std::time::Duration::ZERO);
        let c = Config::parse("cpu_poll_after_data_ms = 100").unwrap();
        assert_eq!(c.cpu_poll_after_data(), std::time::Duration::from_millis(100));
        let e = Config::parse("cpu_poll_after_data_ms = 3600001").unwrap_err();
        assert!(e.contains("cpu_poll_after_data_ms = 3600001"), "{e}");
        assert_eq!(d.keys_needing_restart(&c), vec!["cpu_poll_after_data_ms"]);
    }

    #[test]
    fn empty_file_gives_defaults() {
        let c = Config::parse("").unwrap();
        assert_eq!(c.idle, IdleStrategy::Backoff);
        assert_eq!(c.publish_ring_bytes, 4 << 20);
        assert_eq!(c.max_message(), 1 << 20);
    }

    #[test]
    fn unknown_key_is_named() {
        let e = Config::parse("idle = \"spin\"\nshardz = 3\n").unwrap_err();
        assert!(e.contains("shardz"), "{e}");
    }

    #[test]
    fn local_security_keys_parse_and_bad_ones_are_named() {
        let c = Config::parse(
            "socket_mode = \"0660\"\nsocket_group = \"0\"\n\
             [[access]]\ngroup = \"orders.*\"\npublish = [\"uid:0\"]\nsubscribe = [\"*\", \"group:root\"]\n\
             [[access]]\ngroup = \"audit\"\nsubscribe = [\"user:root\"]\n\
             [limits]\nclients_per_uid = 3\njoins_per_second = 5\n",
        )
        .unwrap();
        assert_eq!(c.access.len(), 2);
        assert_eq!(c.limits.clients_per_uid, 3);
        assert_eq!(c.limits.join_burst, LimitsConfig::default().join_burst);
        let e = Config::parse("socket_mode = \"rw\"").unwrap_err();
        assert!(e.contains("socket_mode"), "{e}");
        let e = Config::parse("[limits]\nclients_per_uid = 0").unwrap_err();
        assert!(e.contains("limits.clients_per_uid"), "{e}");
        let e = Config::parse("[limits]\nclient_per_uid = 2").unwrap_err();
        assert!(e.contains("client_per_uid"), "{e}");
        let e = Config::parse("[[access]]\ngroup = \"a\"\npublish = [\"uid\"]").unwrap_err();
        assert!(e.contains("access[0]"), "{e}");
    }

    #[test]
    fn bad_values_are_named() {
        let e = Config::parse("log_bytes = 1000").unwrap_err();
        assert!(e.contains("log_bytes"), "{e}");
        let e = Config::parse("idle = \"sleepy\"").unwrap_err();
        assert!(e.contains("idle"), "{e}");
        let e = Config::parse("cores = [1, 1]").unwrap_err();
        assert!(e.contains("cores"), "{e}");
    }
}

#[cfg(test)]
mod untrusted {
    use proptest::prelude::*;

    proptest! {
        /// Any text, or a valid file with a line of garbage, gives a config or an error
        /// naming what is wrong; never a panic.
        #[test]
        fn arbitrary_text_never_panics(text in "\\PC{0,300}") {
            let _ = super::Config::parse(&text);
        }

        #[test]
        fn mutated_example_never_panics(line in "[a-z_.\\[\\]]{1,20} ?= ?[-0-9a-z\"\\[\\],.]{0,20}", at in 0usize..40) {
            let example = include_str!("../tuttid.example.toml");
            let mut lines: Vec<&str> = example.lines().collect();
            let at = at % lines.len();
            lines.insert(at, &line);
            let text = lines.join("\n");
            if let Err(e) = super::Config::parse(&text) {
                prop_assert!(!e.is_empty());
            }
        }
    }
}

#[cfg(test)]
mod example {
    #[test]
    fn the_example_config_parses_and_matches_the_defaults() {
        let text = include_str!("../tuttid.example.toml");
        let c = super::Config::parse(text).unwrap();
        let d = super::Config::default();
        assert_eq!(
            (c.publish_ring_bytes, c.log_bytes, c.idle),
            (d.publish_ring_bytes, d.log_bytes, d.idle)
        );
    }
}
