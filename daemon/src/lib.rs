//! tuttid: the tutti messaging daemon. One pinned shard thread per configured core owns
//! its groups and its clients' rings; the control plane on the main thread attaches
//! clients over a Unix socket and hands shards what they need through bounded queues.
#![warn(clippy::undocumented_unsafe_blocks)]

pub mod access;
pub mod cluster;
pub mod config;
pub mod control;
pub mod cpg;
pub mod net;
pub mod sd_notify;
pub mod shard;
pub mod supervise;

use config::Config;
use control::{Control, Exit, ShardLink, DOORBELL_BYTES};
use shard::{Shard, ShardStats};
use std::path::Path;
use std::sync::Arc;
use tutti_sys::{EventFd, Mapping, SeqPacketListener, SignalFd};
use tutti_wire::shm::ShardDoorbell;

/// Control commands queued for one shard before the control thread gets "queue full".
const SHARD_COMMAND_QUEUE: usize = 1024;
/// Shard-to-control events queued before a shard drops one (it is logged either way).
const SHARD_EVENT_QUEUE: usize = 1024;

/// Runs the daemon until SIGTERM or SIGINT; returns the process exit code.
pub fn run(mut config: Config, supervisor: supervise::Supervisor) -> Result<i32, String> {
    config.validate()?;
    let keys = if config.cluster.enabled {
        config.cluster.load_keys()?
    } else {
        None
    };
    if let Some(warning) = keyless_exposure(&config) {
        tracing::warn!(listen = %config.net.listen, "{warning}");
    }
    // Block the signals before any thread starts, so only the control loop sees them.
    let signals = SignalFd::new(&[tutti_sys::SIGTERM, tutti_sys::SIGINT, tutti_sys::SIGHUP])
        .map_err(|e| format!("signalfd: {e}"))?;
    let socket = config.socket_path();
    let socket_mode = access::parse_socket_mode(&config.socket_mode)?;
    let socket_group = match &config.socket_group {
        Some(g) => Some(access::resolve_group(g).map_err(|e| format!("socket_group: {e}"))?),
        None => None,
    };
    let listener = bind_control_socket(&socket, socket_mode, socket_group)?;
    log_tuning(&config);

    let cores = config.shard_cores();
    let available: Vec<usize> = core_affinity::get_core_ids()
        .unwrap_or_default()
        .into_iter()
        .map(|c| c.id)
        .collect();
    if config.node_id == 0 {
        config.node_id = if config.cluster.enabled {
            let dir = config.cluster.state_dir(&socket);
            let (id, how) = cluster::derive_daemon_id(config.net.listen, &dir)?;
            tracing::info!(node_id = id, "node id not set: derived from {how}");
            id
        } else {
            1
        };
    }
    let incarnation = if config.cluster.enabled {
        let dir = config.cluster.state_dir(&socket);
        let inc = cluster::incarnation(&dir, config.node_id);
        tracing::info!(incarnation = inc, state_dir = %dir.display(), "cluster incarnation");
        inc
    } else {
        0
    };
    let (event_tx, event_rx) = crossbeam_channel::bounded(SHARD_EVENT_QUEUE);
    let events_wake = Arc::new(EventFd::new().map_err(|e| format!("eventfd: {e}"))?);
    let mut links = Vec::new();
    let mut threads = Vec::new();
    for (index, &core) in cores.iter().enumerate() {
        let pin = if config.no_pin {
            None
        } else if available.contains(&core) {
            Some(core)
        } else {
            return Err(format!(
                "cores: core {core} is not available to this process (available: {available:?})"
            ));
        };
        let (tx, rx) = crossbeam_channel::bounded(SHARD_COMMAND_QUEUE);
        let wake = Arc::new(EventFd::new().map_err(|e| format!("eventfd: {e}"))?);
        let (counters_fd, stats) = ShardStats::create(index).map_err(|e| format!("shard counters: {e}"))?;
        let stats = Arc::new(stats);
        let (doorbell_fd, doorbell_map) =
            Mapping::create_read_only_for_others(&format!("tutti-shard-{index}"), DOORBELL_BYTES)
                .map_err(|e| format!("shard doorbell: {e}"))?;
        // SAFETY: a fresh zeroed page owned by this shard.
        unsafe { ShardDoorbell::init(doorbell_map.as_ptr(), doorbell_map.len()) }
            .map_err(|e| format!("shard doorbell: {e}"))?;
        let cluster = if config.cluster.enabled {
            let mut cluster = cluster::Cluster::open(
                &config.cluster,
                &config.net,
                config.node_id,
                index,
                config.max_message(),
                incarnation,
                keys.as_ref(),
            )?;
            cluster.keep_view_counter(&config.cluster.state_dir(&socket));
            Some(cluster)
        } else {
            None
        };
        let shard = Shard::new(
            index,
            config.node_id,
            config.idle,
            config.spin_after_data(),
            config.cpu_poll_after_data(),
            rx,
            event_tx.clone(),
            events_wake.clone(),
            wake.clone(),
            doorbell_map,
            stats.clone(),
            cluster,
        )?;
        let handle = std::thread::Builder::new()
            .name(format!("tutti-shard-{index}"))
            .spawn(move || {
                if let Some(core) = pin {
                    if !core_affinity::set_for_current(core_affinity::CoreId { id: core }) {
                        tracing::warn!(shard = index, core, "could not pin shard");
                    }
                }
                shard.run();
            })
            .map_err(|e| format!("spawn shard {index}: {e}"))?;
        threads.push(handle);
        links.push(ShardLink {
            commands: tx,
            wake,
            stats,
            core: pin,
            doorbell_fd,
            counters_fd,
        });
    }
    tracing::info!(
        socket = %socket.display(),
        shards = cores.len(),
        cores = ?cores,
        idle = ?config.idle,
        spin_after_data_us = config.spin_after_data_us,
        cpu_poll_after_data_ms = config.cpu_poll_after_data_ms,
        node_id = config.node_id,
        "tuttid ready"
    );
    let mut control = Control::new(
        config,
        listener,
        signals,
        links,
        event_rx,
        events_wake,
        supervisor,
    )?;
    let exit = control.run();
    control.shutdown();
    for t in threads {
        let _ = t.join();
    }
    let _ = std::fs::remove_file(&socket);
    match exit {
        Exit::Terminated(_) => Ok(0),
    }
}

/// Binds the control socket, creating its directory and replacing a stale socket file
/// (one nobody answers on); refuses to start when another daemon already answers there.
fn bind_control_socket(path: &Path, mode: u32, group: Option<u32>) -> Result<SeqPacketListener, String> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create socket directory {}: {e}", dir.display()))?;
    }
    if path.exists() {
        if tutti_sys::SeqPacket::connect(path).is_ok() {
            return Err(format!(
                "another tuttid already listens on {} (set TUTTI_SOCKET or --socket to run a second one)",
                path.display()
            ));
        }
        std::fs::remove_file(path)
            .map_err(|e| format!("cannot remove stale socket {}: {e}", path.display()))?;
    }
    // Bind and listen under a temporary name, then rename into place: the socket file
    // appears only once connections are accepted (a client racing the start never sees a
    // socket that refuses it).
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temp = path.with_file_name(format!(".{file_name}.{}", std::process::id()));
    let _ = std::fs::remove_file(&temp);
    let (listener, bound) = match SeqPacketListener::bind(&temp) {
        Ok(l) => (l, temp.as_path()),
        // A temporary name too long for a socket address: bind in place instead.
        Err(_) => (
            SeqPacketListener::bind(path).map_err(|e| format!("cannot listen on {}: {e}", path.display()))?,
            path,
        ),
    };
    listener.set_nonblocking().map_err(|e| e.to_string())?;
    // Who may attach is decided by SO_PEERCRED, but keep others from even connecting:
    // `socket_mode` and `socket_group`, set before the socket appears under its name.
    if let Err(e) = tutti_sys::set_mode_and_group(bound, mode, group) {
        let _ = std::fs::remove_file(bound);
        return Err(format!(
            "cannot set the control socket's mode {mode:o}{} on {}: {e} (the daemon must own the socket and, for socket_group, be a member of that group)",
            group.map_or(String::new(), |g| format!(" and group {g}")),
            path.display()
        ));
    }
    if bound != path {
        std::fs::rename(bound, path).map_err(|e| {
            let _ = std::fs::remove_file(bound);
            format!(
                "cannot move the control socket into place at {}: {e}",
                path.display()
            )
        })?;
    }
    Ok(listener)
}

/// The loud warning for a cluster that listens beyond loopback without a key, if it does.
pub fn keyless_exposure(config: &Config) -> Option<String> {
    (config.cluster.enabled && config.cluster.key_file.is_none() && !config.net.listen.is_loopback()).then(
        || {
            format!(
            "NO CLUSTER KEY: anyone who can send UDP to {}:{}.. can join this cluster, read its messages \
             and forge them. Set cluster.key_file (make a key with `tutti keygen`; see docs/security.md)",
            config.net.listen, config.net.base_port
        )
        },
    )
}

/// Logs the host tuning check once at start (the same table as `tutti tune check`):
/// a warning line per setting that differs from what tutti recommends.
fn log_tuning(config: &Config) {
    let cores = if config.no_pin {
        Vec::new()
    } else {
        config.shard_cores()
    };
    let mut opts = tutti_tuning::CheckOptions {
        in_daemon: true,
        ..tutti_tuning::CheckOptions::new(cores)
    };
    opts.cluster = Some(tutti_tuning::ClusterExposure {
        enabled: config.cluster.enabled,
        listen: config.net.listen,
        key_file: config.cluster.key_file.clone(),
    });
    let checks = tutti_tuning::run_checks(&opts);
    let differ = checks.iter().filter(|c| !c.ok).count();
    for c in checks.iter().filter(|c| !c.ok) {
        tracing::warn!(setting = %c.name, found = %c.found, recommended = %c.recommended, "tuning: {}", c.why);
    }
    tracing::info!(
        "tuning check: {} of {} settings as recommended (details: tutti tune check)",
        checks.len() - differ,
        checks.len()
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_keyless_cluster_beyond_loopback_is_warned_about() {
        let open = Config::parse("[cluster]\nenabled = true\n[net]\nlisten = \"0.0.0.0\"\n").unwrap();
        let warning = keyless_exposure(&open).unwrap();
        assert!(
            warning.contains("NO CLUSTER KEY") && warning.contains("0.0.0.0:7400"),
            "{warning}"
        );
        let keyed =
            Config::parse("[cluster]\nenabled = true\nkey_file = \"/k\"\n[net]\nlisten = \"10.1.2.3\"\n")
                .unwrap();
        assert_eq!(keyless_exposure(&keyed), None);
        let loopback = Config::parse("[cluster]\nenabled = true\n[net]\nlisten = \"127.0.5.1\"\n").unwrap();
        assert_eq!(keyless_exposure(&loopback), None);
        let off = Config::parse("[net]\nlisten = \"0.0.0.0\"\n").unwrap();
        assert_eq!(keyless_exposure(&off), None);
        assert!(Config::parse("[cluster]\nencrypt = true\n")
            .unwrap_err()
            .contains("key_file"));
    }
}
