//! tuttid under a service manager, without systemd: a test-owned NOTIFY_SOCKET checks
//! readiness, status, watchdog pings, reload on SIGHUP and STOPPING on SIGTERM.

mod common;

use common::{eventually, Daemon};
use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(20);

/// Collects notify datagrams until `pred` holds for one of them; returns all seen.
fn until(sock: &UnixDatagram, seen: &mut Vec<String>, pred: impl Fn(&str) -> bool) -> bool {
    let deadline = Instant::now() + WAIT;
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        if let Ok(n) = sock.recv(&mut buf) {
            let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
            let hit = pred(&msg);
            seen.push(msg);
            if hit {
                return true;
            }
        }
    }
    false
}

#[test]
fn readiness_watchdog_reload_and_stop() {
    let dir = common::temp_dir("notify");
    let notify_path = dir.join("notify.sock");
    let sock = UnixDatagram::bind(&notify_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    let config = dir.join("tuttid.toml");
    std::fs::write(&config, "log = \"info\"\nidle = \"backoff\"\n").unwrap();

    let mut daemon = Daemon::start_with(
        "notify",
        &["--config", config.to_str().unwrap()],
        &[
            ("NOTIFY_SOCKET", notify_path.to_str().unwrap()),
            ("WATCHDOG_USEC", "300000"),
        ],
    );
    let mut seen = Vec::new();
    assert!(until(&sock, &mut seen, |m| m.starts_with("READY=1")), "{seen:?}");
    let ready = seen.iter().find(|m| m.starts_with("READY=1")).unwrap();
    assert!(ready.contains("STATUS=serving 1 shard(s)"), "{ready}");
    // The watchdog is pinged repeatedly while the shards beat.
    for _ in 0..3 {
        let before = seen.len();
        assert!(until(&sock, &mut seen, |m| m == "WATCHDOG=1"), "{seen:?}");
        assert!(seen.len() > before);
    }

    // SIGHUP: the log filter reloads; a changed client limit needs a restart, and says so.
    std::fs::write(&config, "log = \"debug\"\nidle = \"backoff\"\nmax_clients = 7\n").unwrap();
    daemon.signal(libc::SIGHUP);
    assert!(
        until(&sock, &mut seen, |m| m.starts_with("RELOADING=1")),
        "{seen:?}"
    );
    assert!(until(&sock, &mut seen, |m| m.starts_with("READY=1")), "{seen:?}");
    assert!(
        eventually(WAIT, || daemon.log().contains("log filter reloaded")),
        "{}",
        daemon.log()
    );
    assert!(
        daemon.log().contains("take effect only after a restart"),
        "{}",
        daemon.log()
    );
    assert!(daemon.log().contains("keys=max_clients"), "{}", daemon.log());

    // A config that does not parse is logged and the daemon keeps running.
    std::fs::write(&config, "idle = 7\n").unwrap();
    daemon.signal(libc::SIGHUP);
    assert!(
        eventually(WAIT, || daemon.log().contains("keeping the running settings")),
        "{}",
        daemon.log()
    );
    let mut c = daemon.client();
    c.join("still-serving").unwrap();

    daemon.signal(libc::SIGTERM);
    assert!(until(&sock, &mut seen, |m| m == "STOPPING=1"), "{seen:?}");
    assert_eq!(daemon.wait_exit(WAIT), Some(0), "{}", daemon.log());
}
