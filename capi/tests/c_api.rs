//! libtutti from C against a live tuttid: the example program (linked with the shared and
//! with the static library) and api_check.c (the header's contract, a slow subscriber's
//! LAGGED accounting, and the descriptor when the daemon dies).

mod common;

use common::{compile, crate_dir, temp_dir, wait_exit, Daemon};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

fn run_pubsub(tag: &str, static_lib: bool, count: u32) {
    let dir = temp_dir(tag);
    let program = compile(&crate_dir().join("examples/pubsub.c"), &dir, "pubsub", static_lib);
    let daemon = Daemon::start(&dir, &[]);
    let mut child = Command::new(&program)
        .arg(count.to_string())
        .env("TUTTI_SOCKET", &daemon.socket)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = wait_exit(&mut child, Duration::from_secs(60));
    let out = child.wait_with_output().unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(status.success(), "pubsub failed ({status}):\n{stdout}{stderr}");
    assert!(
        stdout.contains(&format!("pubsub: {count} messages received intact, in order")),
        "{stdout}{stderr}"
    );
    drop(daemon);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn pubsub_example_receives_every_message_intact() {
    run_pubsub("pubsub", false, 3000);
}

#[test]
fn pubsub_example_links_with_the_static_library() {
    run_pubsub("static", true, 300);
}

#[test]
fn api_check_holds_against_a_live_daemon_until_it_dies() {
    let dir = temp_dir("check");
    let program = compile(&crate_dir().join("tests/c/api_check.c"), &dir, "api_check", false);
    // A 64 KiB delivery log: 300 KB published to a subscriber that does not read laps it.
    let mut daemon = Daemon::start(&dir, &["--log-bytes", "65536"]);
    let mut child = Command::new(&program)
        .env("TUTTI_SOCKET", &daemon.socket)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().map(Result::unwrap);
    if first.as_deref() != Some("READY") {
        let status = wait_exit(&mut child, Duration::from_secs(30));
        let err = child.wait_with_output().unwrap().stderr;
        panic!(
            "api_check stopped before READY ({status}): {first:?}\n{}",
            String::from_utf8_lossy(&err)
        );
    }
    daemon.kill();
    let status = wait_exit(&mut child, Duration::from_secs(30));
    let rest: Vec<String> = lines.map(Result::unwrap).collect();
    let err = child.wait_with_output().unwrap().stderr;
    let stderr = String::from_utf8_lossy(&err);
    assert!(status.success(), "api_check failed ({status}):\n{stderr}");
    assert_eq!(rest, ["GONE"], "{stderr}");
    // The slow subscriber's line: LAGGED came, and accounted for every message.
    assert!(stderr.contains("slow subscriber:"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}
