//! Clusters formed with the flags people type: `--listen IP:PORT` and `--seed HOST:PORT`
//! without daemon ids (each id derived from the listen address, each seed's id learned
//! from its first datagram), and what happens when two daemons claim one id. Each test
//! uses its own 127.0.X.0/24 (81-83; cluster.rs uses 61-69 and 161-169).

mod common;

use common::{eventually, status_number, Daemon};
use std::time::Duration;
use tutti_client::{Event, IdleStrategy};

const WAIT: Duration = Duration::from_secs(60);
const PORT: u16 = 17500;

fn addr(subnet: u8, host: u8) -> String {
    format!("127.0.{subnet}.{host}:{PORT}")
}

/// The daemon id derived from 127.0.`subnet`.`host`: its low 24 bits.
fn derived_id(subnet: u8, host: u8) -> u32 {
    (u32::from(subnet) << 8) | u32::from(host)
}

/// Starts a daemon listening on 127.0.`subnet`.`host` with these seeds and extra flags.
fn start(tag: &str, subnet: u8, host: u8, seeds: &[String], extra: &[&str]) -> Daemon {
    let listen = addr(subnet, host);
    let mut args: Vec<&str> = vec!["--listen", &listen];
    for s in seeds {
        args.extend(["--seed", s.as_str()]);
    }
    args.extend(extra);
    Daemon::start(tag, &args)
}

#[test]
fn three_daemons_form_a_cluster_from_address_only_seeds_and_derived_ids() {
    let subnet = 81;
    // One seed list for all, as an operator writes it: every daemon, itself included.
    let seeds: Vec<String> = (1..=3).map(|h| addr(subnet, h)).collect();
    let daemons: Vec<Daemon> = (1..=3)
        .map(|h| start(&format!("flags{h}"), subnet, h, &seeds, &[]))
        .collect();
    for (i, d) in daemons.iter().enumerate() {
        let mut c = d.client();
        assert!(
            eventually(WAIT, || status_number(&c.status().unwrap(), "view_members")
                == Some(3)),
            "daemon {i} never saw 3 members:\n{}\n{}",
            c.status().unwrap(),
            d.log()
        );
        let s = c.status().unwrap();
        let id = derived_id(subnet, i as u8 + 1);
        assert_eq!(status_number(&s, " node"), Some(u64::from(id)), "{s}");
        assert!(
            d.log().contains("node id not set: derived from the low 24 bits"),
            "{}",
            d.log()
        );
        // The members table: every daemon with its address and when it was last heard.
        for h in 1..=3u8 {
            let line = s
                .lines()
                .find(|l| l.contains(&addr(subnet, h)))
                .unwrap_or_else(|| panic!("no member line for {}:\n{s}", addr(subnet, h)));
            assert!(
                line.trim_start().starts_with(&derived_id(subnet, h).to_string()),
                "{line}"
            );
            if usize::from(h) == i + 1 {
                assert!(line.contains("(this)"), "{line}");
            } else {
                assert!(line.contains(" ago"), "{line}");
            }
        }
        assert!(!s.contains("no answer yet"), "every seed answered:\n{s}");
        assert_eq!(status_number(&s, "duplicate_ids"), Some(0), "{s}");
        assert!(d.log().contains("seed answered"), "{}", d.log());
    }

    // Messages flow: each daemon's member publishes, every member gets all, in order.
    let mut clients: Vec<_> = daemons.iter().map(Daemon::client).collect();
    let before = common::newest_view(&mut clients);
    let mut members: Vec<_> = daemons
        .iter()
        .map(|d| {
            let mut c = d.client();
            let g = c.join("typed").unwrap();
            (c, g)
        })
        .collect();
    common::wait_settled_view(&mut clients, before, WAIT);
    const PER_SENDER: u64 = 100;
    for index in 0..PER_SENDER {
        for (i, (c, g)) in members.iter_mut().enumerate() {
            let m = format!("{i}:{index}");
            c.offer_blocking(*g, m.as_bytes(), IdleStrategy::Backoff, WAIT)
                .unwrap();
        }
    }
    for (c, g) in members.iter_mut() {
        let mut next = [0u64; 3];
        assert!(
            eventually(WAIT, || {
                c.poll(*g, 256, |e| match e {
                    Event::Message { payload, .. } => {
                        let text = std::str::from_utf8(payload).unwrap();
                        let (s, n) = text.split_once(':').unwrap();
                        let (s, n): (usize, u64) = (s.parse().unwrap(), n.parse().unwrap());
                        assert_eq!(n, next[s], "FIFO per sender");
                        next[s] += 1;
                    }
                    other => panic!("unexpected {other:?}"),
                })
                .unwrap();
                next.iter().all(|&n| n == PER_SENDER)
            }),
            "received {next:?}"
        );
    }
    // Per-group rates and totals in status.
    let s = clients[0].status().unwrap();
    let line = s.lines().find(|l| l.contains("typed (shard 0)")).unwrap();
    assert!(
        line.contains(&format!("published here {PER_SENDER} (")) && line.contains("/s), from other daemons"),
        "{line}"
    );
}

#[test]
fn two_addresses_claiming_one_daemon_id_are_refused_and_named() {
    let subnet = 82;
    // a and b both claim id 7; c (id 9) hears both; a also contacts b directly.
    let c = start("dup-c", subnet, 3, &[], &["--node-id", "9"]);
    let b = start("dup-b", subnet, 2, &[addr(subnet, 3)], &["--node-id", "7"]);
    let a = start(
        "dup-a",
        subnet,
        1,
        &[addr(subnet, 2), addr(subnet, 3)],
        &["--node-id", "7"],
    );
    let (a_addr, b_addr) = (addr(subnet, 1), addr(subnet, 2));
    // The third daemon names both addresses, whichever it heard first.
    assert!(
        eventually(WAIT, || {
            let log = c.log();
            log.contains("daemon id 7 is claimed by both") && log.contains(&a_addr) && log.contains(&b_addr)
        }),
        "{}",
        c.log()
    );
    let s = c.client().status().unwrap();
    assert!(status_number(&s, "duplicate_ids").unwrap() > 0, "{s}");
    assert!(s.contains("DUPLICATE daemon id 7: claimed by"), "{s}");
    // b hears a datagram with its own id from another address.
    assert!(
        eventually(WAIT, || b.log().contains(&format!(
            "daemon id 7 is claimed by both {b_addr} and {a_addr}"
        ))),
        "{}",
        b.log()
    );
    // Nobody took the impostor into its view alongside the original: c's view has 2
    // members (itself and one id-7 daemon), never 3.
    assert!(status_number(&c.client().status().unwrap(), "view_members").unwrap() <= 2);
    drop(a);
}

#[test]
fn a_node_id_that_cannot_be_derived_from_the_address_is_random_and_kept() {
    // Listening on 0.0.0.0: no address to derive from; the id is random and kept in the
    // state directory, so a restart has the same id.
    let subnet = 83;
    let state = common::temp_dir("flags-state");
    let state_arg = format!("[cluster]\nstate_dir = {:?}\n", state.to_str().unwrap());
    let config = state.join("tuttid.toml");
    std::fs::write(&config, state_arg).unwrap();
    // Port 0: an ephemeral port, so that the wildcard address collides with no test.
    let listen = "0.0.0.0:0".to_string();
    let seed = addr(subnet, 1);
    let args = [
        "--config",
        config.to_str().unwrap(),
        "--listen",
        &listen,
        "--seed",
        &seed,
    ];
    let first = Daemon::start("flags-random", &args);
    // The control socket can answer before the cluster side has started: wait for the file.
    assert!(
        common::eventually(std::time::Duration::from_secs(20), || state
            .join("node-id")
            .exists()),
        "no node-id file in {}",
        state.display()
    );
    let kept = std::fs::read_to_string(state.join("node-id")).expect("node-id file");
    let id: u64 = kept.trim().parse().unwrap();
    assert!((1..1 << 24).contains(&id), "{kept}");
    let s = first.client().status().unwrap();
    assert_eq!(status_number(&s, " node"), Some(id), "{s}");
    assert!(
        first.log().contains("derived from random, kept in"),
        "{}",
        first.log()
    );
    drop(first);
    let again = Daemon::start("flags-random-again", &args);
    let s = again.client().status().unwrap();
    assert_eq!(
        status_number(&s, " node"),
        Some(id),
        "the same id after a restart: {s}"
    );
    // Its unanswered seed is shown as such.
    assert!(s.contains(&format!("seed {seed} ({seed}): no answer yet")), "{s}");
    let _ = std::fs::remove_dir_all(&state);
}

/// The counter of the cluster view a status shows ("view 7 by daemon 1: ...").
fn view_counter(status: &str) -> Option<u64> {
    common::cluster_view(status)?
        .strip_prefix("view ")?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[test]
fn a_restarted_daemon_numbers_its_views_past_the_counter_it_kept() {
    // A daemon alone, killed and restarted: without the kept counter its views start at 0
    // again, and an `evs` list it founds could take the name of one its earlier
    // incarnation founded (docs/ordered.md, known failing crash seeds).
    let subnet = 86;
    let state = common::temp_dir("flags-counter");
    let config = state.join("tuttid.toml");
    let state_arg = format!("[cluster]\nstate_dir = {:?}\n", state.to_str().unwrap());
    std::fs::write(&config, state_arg).unwrap();
    let args = ["--config", config.to_str().unwrap()];
    let kept_file = state.join(format!("view-counter-{}", derived_id(subnet, 1) << 8));
    let first = start("flags-counter", subnet, 1, &[], &args);
    // Alone, it installs view 1 of itself (restarted without the kept counter: view 1
    // again).
    let mut c = first.client();
    assert!(
        eventually(WAIT, || view_counter(&c.status().unwrap())
            .is_some_and(|v| v >= 1)),
        "{}",
        c.status().unwrap()
    );
    let before = view_counter(&c.status().unwrap()).unwrap();
    assert!(
        eventually(WAIT, || std::fs::read_to_string(&kept_file)
            .is_ok_and(|s| s.trim() == before.to_string())),
        "{} does not hold {before}",
        kept_file.display()
    );
    drop(c);
    // kill -9. The kernel tears a dead process's io_uring down in the background, and its
    // socket stays bound until then: wait until the address is free before the restart.
    let mut first = first;
    first.child.kill().unwrap();
    first.child.wait().unwrap();
    assert!(
        eventually(WAIT, || std::net::UdpSocket::bind(addr(subnet, 1)).is_ok()),
        "{} stayed bound after the kill",
        addr(subnet, 1)
    );
    let again = start("flags-counter-again", subnet, 1, &[], &args);
    let mut c = again.client();
    assert!(
        eventually(WAIT, || view_counter(&c.status().unwrap())
            .is_some_and(|v| v > before)),
        "the restarted daemon's view is not past {before}: {}",
        c.status().unwrap()
    );
    let _ = std::fs::remove_dir_all(&state);
}
