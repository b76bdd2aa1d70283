//! `tutti-bench minitx`: N daemons on 127.0.0.2.. in a cluster, one application region
//! (`docs/regions.md`) holding a u64 counter, and C clients (on daemons 1, 2, ... round
//! robin) each running a compare-and-swap increment loop over the control channel for the
//! measured time. Reports minitransactions per second (every answered call, committed or
//! conflicted), committed increments per second and the call latency percentiles; checks
//! that the final counter equals the committed increments (no lost update).

use crate::cluster::node_ip;
use crate::daemon::{Daemon, DaemonOptions};
use crate::ordered::clients_in_one_view;
use hdrhistogram::Histogram;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tutti_client::{Client, Minitx, MinitxError};

const REGION: &str = "tutti-bench-counter";

pub struct MinitxOptions {
    pub tuttid: PathBuf,
    pub nodes: usize,
    pub clients: usize,
    pub duration: Duration,
    pub base_port: u16,
}

pub struct MinitxResult {
    pub nodes: usize,
    pub clients: usize,
    pub seconds: f64,
    pub calls: u64,
    pub committed: u64,
    pub conflicts: u64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub max_us: f64,
}

fn config_text(o: &MinitxOptions, node: usize) -> String {
    let seeds: Vec<String> = (1..=o.nodes).map(|n| format!("\"{n}@{}\"", node_ip(n))).collect();
    format!(
        "node_id = {node}\n[cluster]\nenabled = true\nseeds = [{}]\n[net]\nlisten = \"{}\"\nbase_port = {}\n",
        seeds.join(", "),
        node_ip(node),
        o.base_port,
    )
}

pub fn run(o: &MinitxOptions) -> Result<MinitxResult, String> {
    let mut daemons = Vec::with_capacity(o.nodes);
    for node in 1..=o.nodes {
        let config = config_text(o, node);
        daemons.push(
            Daemon::start(&DaemonOptions {
                tuttid: &o.tuttid,
                idle: "backoff",
                core: 0,
                no_pin: true,
                config: Some(&config),
            })
            .map_err(|e| format!("daemon {node} ({}): {e}", node_ip(node)))?,
        );
    }
    let mut monitors = clients_in_one_view(&daemons)?;
    monitors[0]
        .region_create(REGION, 8)
        .map_err(|e| format!("region create: {e}"))?;
    let started = Instant::now();
    let results = std::thread::scope(|s| {
        let workers: Vec<_> = (0..o.clients)
            .map(|i| {
                let socket = daemons[i % o.nodes].socket().to_path_buf();
                s.spawn(move || -> Result<(Histogram<u64>, u64, u64, u64), String> {
                    let mut c = Client::connect_to(&socket).map_err(|e| e.to_string())?;
                    let mut h = Histogram::<u64>::new(3).map_err(|e| e.to_string())?;
                    let (mut calls, mut committed, mut conflicts, mut guess) = (0u64, 0u64, 0u64, 0u64);
                    while started.elapsed() < o.duration {
                        let m = Minitx::new().compare(REGION, 0, &guess.to_le_bytes()).write(
                            REGION,
                            0,
                            &(guess + 1).to_le_bytes(),
                        );
                        let t = Instant::now();
                        let r = c.minitx(&m);
                        let _ = h.record(t.elapsed().as_nanos() as u64);
                        calls += 1;
                        match r {
                            Ok(_) => {
                                committed += 1;
                                guess += 1;
                            }
                            Err(MinitxError::Conflict { failed, .. }) => {
                                conflicts += 1;
                                let b: [u8; 8] = failed
                                    .first()
                                    .and_then(|f| f.1.as_slice().try_into().ok())
                                    .ok_or("conflict without the current value")?;
                                guess = u64::from_le_bytes(b);
                            }
                            Err(e) => return Err(format!("minitx: {e}")),
                        }
                    }
                    Ok((h, calls, committed, conflicts))
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().map_err(|_| "a client thread panicked".to_string())?)
            .collect::<Result<Vec<_>, String>>()
    })?;
    let seconds = started.elapsed().as_secs_f64();
    let mut h = Histogram::<u64>::new(3).map_err(|e| e.to_string())?;
    let (mut calls, mut committed, mut conflicts) = (0, 0, 0);
    for (wh, c, k, f) in &results {
        h.add(wh).map_err(|e| e.to_string())?;
        calls += c;
        committed += k;
        conflicts += f;
    }
    let out = monitors[0]
        .minitx(&Minitx::new().read(REGION, 0, 8))
        .map_err(|e| format!("final read: {e}"))?;
    let value = u64::from_le_bytes(out.reads[0].as_slice().try_into().map_err(|_| "8 bytes")?);
    if value != committed {
        return Err(format!(
            "lost update: counter {value}, committed increments {committed}"
        ));
    }
    let us = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    Ok(MinitxResult {
        nodes: o.nodes,
        clients: o.clients,
        seconds,
        calls,
        committed,
        conflicts,
        p50_us: us(0.5),
        p90_us: us(0.9),
        p99_us: us(0.99),
        max_us: h.max() as f64 / 1000.0,
    })
}

pub fn print(r: &MinitxResult, json: bool) {
    if json {
        println!(
            "{}",
            serde_json::json!({
                "bench": "minitx", "nodes": r.nodes, "clients": r.clients, "seconds": r.seconds,
                "calls": r.calls, "committed": r.committed, "conflicts": r.conflicts,
                "txn_per_s": r.calls as f64 / r.seconds, "committed_per_s": r.committed as f64 / r.seconds,
                "p50_us": r.p50_us, "p90_us": r.p90_us, "p99_us": r.p99_us, "max_us": r.max_us,
            })
        );
        return;
    }
    println!(
        "minitx: {} daemons, {} client(s), single-region CAS increment, {:.1} s",
        r.nodes, r.clients, r.seconds
    );
    println!(
        "  {:.0} txn/s ({} calls), {:.0} committed/s, {} conflicts; counter == committed",
        r.calls as f64 / r.seconds,
        r.calls,
        r.committed as f64 / r.seconds,
        r.conflicts
    );
    println!(
        "  call latency: p50 {:.0} us  p90 {:.0} us  p99 {:.0} us  max {:.0} us",
        r.p50_us, r.p90_us, r.p99_us, r.max_us
    );
}
