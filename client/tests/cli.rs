//! The `tutti` tool against a real `tuttid`: pub/sub lines, status, tune check.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn tutti() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_tutti"))
}

/// tuttid is built beside tutti by a workspace build (`cargo nextest run --workspace`).
fn tuttid() -> PathBuf {
    let path = tutti().with_file_name("tuttid");
    assert!(
        path.exists(),
        "{} missing: build the workspace (cargo build --workspace) first",
        path.display()
    );
    path
}

struct Daemon {
    child: Child,
    dir: PathBuf,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn start() -> (Daemon, PathBuf) {
    let dir = std::env::temp_dir().join(format!("tutti-cli-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let socket = dir.join("tuttid.sock");
    let child = Command::new(tuttid())
        .env("TUTTI_SOCKET", &socket)
        .args(["--no-pin", "--idle", "backoff"])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let daemon = Daemon { child, dir };
    assert!(
        eventually(Duration::from_secs(20), || socket.exists()),
        "tuttid did not start"
    );
    (daemon, socket)
}

/// Polls `f` every 10 ms until it returns true or `timeout` passes.
fn eventually(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn status(socket: &PathBuf) -> String {
    let out = Command::new(tutti())
        .env("TUTTI_SOCKET", socket)
        .arg("status")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn pub_lines_reach_sub_and_status_shows_them() {
    let (_daemon, socket) = start();
    let sub = Command::new(tutti())
        .env("TUTTI_SOCKET", &socket)
        .args(["sub", "chat", "--count", "3"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    assert!(
        eventually(Duration::from_secs(20), || status(&socket)
            .contains("chat (shard 0): 1 members")),
        "subscriber never joined"
    );
    let mut publisher = Command::new(tutti())
        .env("TUTTI_SOCKET", &socket)
        .args(["pub", "chat"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    publisher
        .stdin
        .take()
        .unwrap()
        .write_all(b"hello\nworld, with spaces\n\xce\xbb\n")
        .unwrap();
    assert!(publisher.wait().unwrap().success());
    let out = sub.wait_with_output().unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        "hello\nworld, with spaces\n\u{3bb}\n"
    );
    let s = status(&socket);
    assert!(s.contains("shards: 1"), "{s}");
    // The counters page, read live from shared memory, agrees: three messages in.
    let out = Command::new(tutti())
        .env("TUTTI_SOCKET", &socket)
        .args(["stat", "--once", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let shard0: serde_json::Value =
        serde_json::from_slice(out.stdout.split(|&b| b == b'\n').next().unwrap()).unwrap();
    assert_eq!(shard0["frames_in"], 3, "{shard0}");
    assert_eq!(shard0["bad_frames"], 0, "{shard0}");
    // The table shows counters that moved; --all shows the others too.
    let table = |args: &[&str]| {
        let out = Command::new(tutti())
            .env("TUTTI_SOCKET", &socket)
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let moved = table(&["stat", "--once"]);
    assert!(moved.contains("frames_in"), "{moved}");
    assert!(!moved.contains("bad_frames"), "{moved}");
    let all = table(&["stat", "--once", "--all"]);
    assert!(
        all.contains("bad_frames") && all.contains("subscriber_wakes"),
        "{all}"
    );
    assert!(s.contains("groups: 0"), "both left, so the group is freed: {s}");
}

#[test]
fn without_a_daemon_the_error_says_what_to_do() {
    let out = Command::new(tutti())
        .env("TUTTI_SOCKET", "/nonexistent/tuttid.sock")
        .arg("status")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("/nonexistent/tuttid.sock") && err.contains("is tuttid running"),
        "{err}"
    );
}

#[test]
fn tune_check_json_has_one_object_per_check_and_exit_code_agrees() {
    let out = Command::new(tutti())
        .args(["tune", "check", "--json", "--cores", "0"])
        .output()
        .unwrap();
    let checks: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let checks = checks.as_array().unwrap();
    assert!(checks.len() >= 10);
    for c in checks {
        for key in ["name", "found", "recommended", "ok", "why"] {
            assert!(c.get(key).is_some(), "{key} missing in {c}");
        }
    }
    let all_ok = checks.iter().all(|c| c["ok"].as_bool().unwrap());
    assert_eq!(out.status.code(), Some(if all_ok { 0 } else { 1 }));
    let table = Command::new(tutti()).args(["tune", "check"]).output().unwrap();
    assert!(String::from_utf8_lossy(&table.stdout).contains("net.core.rmem_max"));
}

#[test]
fn a_denied_join_is_printed_with_its_reason_and_counted_in_stat() {
    let (me, _) = tutti_sys::effective_ids();
    let dir = std::env::temp_dir().join(format!("tutti-cli-denied-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let socket = dir.join("tuttid.sock");
    let config = dir.join("tuttid.toml");
    std::fs::write(
        &config,
        format!(
            "[[access]]\ngroup = \"locked\"\npublish = [\"uid:{}\"]\nsubscribe = [\"uid:{me}\"]\n",
            me.wrapping_add(1)
        ),
    )
    .unwrap();
    let child = Command::new(tuttid())
        .env("TUTTI_SOCKET", &socket)
        .args(["--no-pin", "--idle", "backoff", "--config"])
        .arg(&config)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _daemon = Daemon { child, dir };
    assert!(eventually(Duration::from_secs(20), || socket.exists()));
    let mut publisher = Command::new(tutti())
        .env("TUTTI_SOCKET", &socket)
        .args(["pub", "locked"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let _ = publisher.stdin.take().unwrap().write_all(b"x\n");
    let out = publisher.wait_with_output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "permission denied: uid {me} may not publish group \"locked\""
        )),
        "{stderr}"
    );
    // Subscribing is allowed (`tutti sub` joins with the subscribe right only).
    let sub = Command::new(tutti())
        .env("TUTTI_SOCKET", &socket)
        .args(["sub", "locked", "--idle-exit", "0.1"])
        .output()
        .unwrap();
    assert!(sub.status.success(), "{}", String::from_utf8_lossy(&sub.stderr));
    let stat = Command::new(tutti())
        .env("TUTTI_SOCKET", &socket)
        .args(["stat", "--once", "--json"])
        .output()
        .unwrap();
    let text = String::from_utf8(stat.stdout).unwrap();
    let control: serde_json::Value = text
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|v| v["shard"] == "control")
        .unwrap_or_else(|| panic!("no control page in {text}"));
    assert_eq!(control["denied_publish"], 1, "{control}");
}

#[test]
fn keygen_writes_a_private_key_once() {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join(format!("tutti-cli-keygen-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let (a, b) = (dir.join("a.key"), dir.join("b.key"));
    for p in [&a, &b] {
        let out = Command::new(tutti()).arg("keygen").arg(p).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let mode = std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "created private, whatever the umask");
    }
    let key_a = std::fs::read_to_string(&a).unwrap();
    let key_b = std::fs::read_to_string(&b).unwrap();
    tutti_wire::cluster_key::parse_key(&key_a).unwrap();
    assert_ne!(key_a, key_b, "fresh randomness each time");
    let again = Command::new(tutti()).arg("keygen").arg(&a).output().unwrap();
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(
        !again.status.success() && err.contains("not overwriting"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(&a).unwrap(),
        key_a,
        "the old key is intact"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn tune_check_flags_a_cluster_open_to_the_network_without_a_key() {
    let dir = std::env::temp_dir().join(format!("tutti-cli-tune-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("tuttid.toml");
    std::fs::write(
        &config,
        "[cluster]\nenabled = true\n[net]\nlisten = \"0.0.0.0\"\n",
    )
    .unwrap();
    let out = Command::new(tutti())
        .args(["tune", "check", "--json", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let checks: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let key = checks
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "cluster.key_file")
        .expect("the cluster key check ran");
    assert_eq!(key["ok"], false, "{key}");
    std::fs::remove_dir_all(&dir).unwrap();
}
