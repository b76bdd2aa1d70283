//! The daemon's relations with its service manager: readiness and status (sd_notify), the
//! watchdog (pinged only while every shard's heartbeat advances, so a stalled shard gets
//! the daemon restarted), and reloading the config on SIGHUP.

use crate::config::Config;
use crate::control::ShardLink;
use crate::sd_notify::{self, Notifier};
use crate::shard::counter;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// A shard whose heartbeat has not moved for this long (or the watchdog interval, if
/// longer) counts as stalled. Parked shards still beat every park timeout (500 ms).
const STALL_AFTER: Duration = Duration::from_secs(2);
/// How often the control loop wakes when nothing happens.
const CONTROL_TICK: Duration = Duration::from_secs(1);

/// Applies a new log filter (tracing env-filter syntax) to the running daemon.
pub type SetLogFilter = Box<dyn Fn(&str) -> Result<(), String> + Send>;
/// Re-applies the command line's overrides to a freshly read config file.
pub type ApplyOverrides = Box<dyn Fn(&mut Config) + Send>;

pub struct Supervisor {
    notifier: Notifier,
    watchdog: Option<Duration>,
    last_ping: Instant,
    beats: Vec<(u64, Instant)>,
    stall_after: Duration,
    stalled: bool,
    config_path: Option<PathBuf>,
    set_log_filter: Option<SetLogFilter>,
    overrides: ApplyOverrides,
}

impl Supervisor {
    pub fn new(
        config_path: Option<PathBuf>,
        set_log_filter: Option<SetLogFilter>,
        overrides: ApplyOverrides,
    ) -> Supervisor {
        let notifier = Notifier::from_env().unwrap_or_else(|e| {
            tracing::warn!("NOTIFY_SOCKET unusable, not notifying the service manager: {e}");
            Notifier::disabled()
        });
        let watchdog = sd_notify::watchdog_interval();
        if let Some(w) = watchdog {
            tracing::info!(interval_ms = w.as_millis() as u64, "systemd watchdog enabled");
        }
        Supervisor {
            notifier,
            watchdog,
            last_ping: Instant::now(),
            beats: Vec::new(),
            stall_after: watchdog.map_or(STALL_AFTER, |w| w.max(STALL_AFTER)),
            stalled: false,
            config_path,
            set_log_filter,
            overrides,
        }
    }

    /// How long the control loop may sleep between two ticks.
    pub fn tick_interval(&self) -> Duration {
        self.watchdog.map_or(CONTROL_TICK, |w| (w / 3).min(CONTROL_TICK))
    }

    pub fn ready(&mut self, status: &str) {
        if let Err(e) = self.notifier.ready(status) {
            tracing::warn!("sd_notify READY failed: {e}");
        }
        self.ping();
    }

    pub fn stopping(&self) {
        if let Err(e) = self.notifier.stopping() {
            tracing::warn!("sd_notify STOPPING failed: {e}");
        }
    }

    fn ping(&mut self) {
        if self.watchdog.is_some() {
            if let Err(e) = self.notifier.watchdog() {
                tracing::warn!("sd_notify WATCHDOG failed: {e}");
            }
        }
        self.last_ping = Instant::now();
    }

    /// Called on every pass of the control loop: checks the shards' heartbeats and pings
    /// the watchdog when due and every shard is alive.
    pub fn tick(&mut self, shards: &[ShardLink]) {
        let now = Instant::now();
        if self.beats.len() != shards.len() {
            self.beats = shards
                .iter()
                .map(|s| (s.stats.get(counter::HEARTBEAT), now))
                .collect();
        }
        let limit = self.stall_after;
        let mut stalled = None;
        for (i, (shard, beat)) in shards.iter().zip(self.beats.iter_mut()).enumerate() {
            let value = shard.stats.get(counter::HEARTBEAT);
            if value != beat.0 {
                *beat = (value, now);
            } else if now.duration_since(beat.1) > limit {
                stalled = Some(i);
            }
        }
        match stalled {
            Some(i) => {
                if !self.stalled {
                    tracing::error!(
                        shard = i,
                        "shard stalled: no heartbeat; no longer pinging the watchdog"
                    );
                    let _ = self.notifier.status(&format!("shard {i} stalled"));
                }
                self.stalled = true;
            }
            None => {
                if self.stalled {
                    tracing::info!("all shards beating again");
                    let _ = self.notifier.status("serving");
                }
                self.stalled = false;
                if let Some(w) = self.watchdog {
                    if now.duration_since(self.last_ping) >= w / 3 {
                        self.ping();
                    }
                }
            }
        }
    }

    /// SIGHUP: re-reads the config file. The log filter applies at once; for every other
    /// changed key the log says that it needs a restart. A file that does not parse is
    /// logged and the running settings are kept.
    pub fn reload(&mut self, running: &mut Config) {
        let _ = self.notifier.reloading();
        match &self.config_path {
            None => tracing::info!("SIGHUP: tuttid was started without --config; nothing to reload"),
            Some(path) => match Config::load(path) {
                Err(e) => tracing::error!("SIGHUP: {e}; keeping the running settings"),
                Ok(mut new) => {
                    (self.overrides)(&mut new);
                    if new.log != running.log {
                        match self.set_log_filter.as_ref().map(|f| f(&new.log)) {
                            Some(Ok(())) => {
                                tracing::info!(filter = %new.log, "SIGHUP: log filter reloaded");
                                running.log = new.log.clone();
                            }
                            Some(Err(e)) => tracing::error!("SIGHUP: log = {:?}: {e}", new.log),
                            None => tracing::warn!("SIGHUP: log filter cannot be changed in this process"),
                        }
                    }
                    if new.access != running.access || new.limits != running.limits {
                        running.access = new.access.clone();
                        running.limits = new.limits.clone();
                        tracing::info!(
                            "SIGHUP: access lists and limits reloaded (they apply to new attaches and joins)"
                        );
                    }
                    let restart = running.keys_needing_restart(&new);
                    if restart.is_empty() {
                        tracing::info!("SIGHUP: config reloaded");
                    } else {
                        tracing::warn!(
                            keys = %restart.join(", "),
                            "SIGHUP: these settings changed and take effect only after a restart"
                        );
                    }
                }
            },
        }
        if let Err(e) = self.notifier.ready("serving") {
            tracing::warn!("sd_notify READY failed: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shard::ShardStats;
    use std::os::unix::net::UnixDatagram;
    use std::sync::Arc;

    fn link() -> ShardLink {
        let (commands, _rx) = crossbeam_channel::bounded(1);
        let (doorbell_fd, _map) = tutti_sys::Mapping::create("t", 4096).unwrap();
        let (counters_fd, stats) = ShardStats::create(0).unwrap();
        ShardLink {
            commands,
            wake: Arc::new(tutti_sys::EventFd::new().unwrap()),
            stats: Arc::new(stats),
            core: None,
            doorbell_fd,
            counters_fd,
        }
    }

    fn drain(sock: &UnixDatagram) -> Vec<String> {
        let mut out = Vec::new();
        let mut buf = [0u8; 256];
        while let Ok(n) = sock.recv(&mut buf) {
            out.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        out
    }

    #[test]
    fn a_stalled_shard_stops_the_watchdog_pings() {
        let dir = std::env::temp_dir().join(format!("tutti-supervise-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify.sock");
        let sock = UnixDatagram::bind(&path).unwrap();
        sock.set_nonblocking(true).unwrap();
        let mut sup = Supervisor {
            notifier: Notifier::from_path(&path).unwrap(),
            watchdog: Some(Duration::from_millis(30)),
            last_ping: Instant::now(),
            beats: Vec::new(),
            stall_after: Duration::from_millis(400),
            stalled: false,
            config_path: None,
            set_log_filter: None,
            overrides: Box::new(|_| {}),
        };
        let shards = vec![link(), link()];
        let beat = |s: &ShardLink| s.stats.add(counter::HEARTBEAT, 1);

        // Both shards beating: pings flow.
        for _ in 0..10 {
            shards.iter().for_each(|s| {
                beat(s);
            });
            sup.tick(&shards);
            std::thread::sleep(Duration::from_millis(15));
        }
        assert!(drain(&sock).iter().filter(|m| *m == "WATCHDOG=1").count() >= 2);

        // Shard 1 stops beating: once past the stall limit, no more pings.
        // (Drained as we go: a datagram socket queues only a few messages.)
        let stop = Instant::now();
        let mut late = Vec::new();
        while stop.elapsed() < Duration::from_millis(1200) {
            beat(&shards[0]);
            sup.tick(&shards);
            late.extend(drain(&sock));
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(
            late.iter().any(|m| m.contains("STATUS=shard 1 stalled")),
            "{late:?}"
        );
        sup.tick(&shards);
        assert!(drain(&sock).is_empty(), "no ping while a shard is stalled");

        // It recovers: pings resume.
        for _ in 0..10 {
            shards.iter().for_each(|s| {
                beat(s);
            });
            sup.tick(&shards);
            std::thread::sleep(Duration::from_millis(15));
        }
        assert!(drain(&sock).iter().any(|m| m == "WATCHDOG=1"));
    }
}
