//! `tutti`: the command-line tool: publish lines, print a group's messages, show the
//! daemon's status, make a cluster key, check the host's tuning.
#![forbid(unsafe_code)]

use clap::{Parser, Subcommand};
use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use tutti_client::{Client, Event, GroupOptions, IdleStrategy, LeftReason, OfferError, Rights, ViewRecord};

#[derive(Parser, Debug)]
#[command(
    name = "tutti",
    version,
    about = "Publish to and subscribe to tutti process groups",
    after_help = "Which daemon: --socket PATH, else $TUTTI_SOCKET, else the per-user socket \
($XDG_RUNTIME_DIR/tutti/tuttid.sock; /tmp/tutti-$USER/tuttid.sock without XDG_RUNTIME_DIR; \
/run/tutti/tuttid.sock as root) when a daemon listens there, else the system daemon's \
/run/tutti/tuttid.sock (the systemd unit's; attaching needs membership of group tutti)."
)]
struct Args {
    /// Control socket of the local tuttid. Unset: $TUTTI_SOCKET, else the per-user socket
    /// if it exists, else the system daemon's /run/tutti/tuttid.sock (see below).
    #[arg(long, global = true, value_name = "PATH")]
    socket: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Publish each line of standard input as one message.
    Pub {
        group: String,
        /// The group is ordered (one total order of all senders; see docs/ordered.md).
        #[arg(long)]
        ordered: bool,
        /// Ordered with safe delivery (implies --ordered).
        #[arg(long)]
        safe: bool,
        /// Ordered with partition policy evs: each side of a partition goes on in a
        /// configuration of its own (implies --ordered; see docs/ordered.md).
        #[arg(long)]
        evs: bool,
    },
    /// Print each message of a group as one line (payloads are printed as UTF-8, lossily).
    /// With --ordered, views and the installed snapshot are printed at their place among
    /// the messages as lines starting with "# ".
    Sub {
        group: String,
        /// The group is ordered (one total order of all senders; see docs/ordered.md).
        #[arg(long)]
        ordered: bool,
        /// Ordered with safe delivery (implies --ordered).
        #[arg(long)]
        safe: bool,
        /// Ordered with partition policy evs: each side of a partition goes on in a
        /// configuration of its own (implies --ordered; see docs/ordered.md).
        #[arg(long)]
        evs: bool,
        /// Exit after this many messages.
        #[arg(long)]
        count: Option<u64>,
        /// Exit after this many seconds without a message.
        #[arg(long, value_name = "SECS")]
        idle_exit: Option<f64>,
    },
    /// Show shards, groups and attached clients of the local daemon.
    Status,
    /// Show the daemon's counters live, read from shared memory without disturbing the
    /// daemon: per shard, then the control plane's refusals at attach and join, each
    /// counter's value and its rate per second over the last interval (gauges have no
    /// rate). Counters that are 0 are left out unless --all.
    Stat {
        /// Seconds between refreshes (and the window of the rates).
        #[arg(long, default_value_t = 1.0)]
        interval: f64,
        /// Print once and exit (after one interval, to have rates; with --json at once).
        #[arg(long)]
        once: bool,
        /// Print one JSON object per shard and refresh (with --once: once).
        #[arg(long)]
        json: bool,
        /// Show every counter, also those that are 0.
        #[arg(long)]
        all: bool,
    },
    /// Write a fresh 256-bit cluster key (from the OS random source) to PATH, created with
    /// mode 0600; never overwrites. Copy the file to every daemon of the cluster and set
    /// `cluster.key_file` (see docs/security.md).
    Keygen {
        #[arg(default_value = "/etc/tutti/cluster.key")]
        path: PathBuf,
    },
    /// Host tuning.
    Tune {
        #[command(subcommand)]
        what: TuneCommand,
    },
    /// Named memory regions of the cluster and minitransactions on them (docs/regions.md).
    /// VALUE: a decimal integer (8 bytes, little-endian u64), x:HEX (raw bytes) or s:TEXT.
    Region {
        #[command(subcommand)]
        what: RegionCommand,
    },
}

#[derive(Subcommand, Debug)]
enum RegionCommand {
    /// Create region NAME of SIZE zero bytes (idempotent; another size is an error).
    Create { name: String, size: u32 },
    /// Print LEN bytes at OFFSET of region NAME (hex, or a u64 with --u64).
    Read {
        name: String,
        offset: u32,
        len: u32,
        /// Print the 8 bytes as a little-endian u64.
        #[arg(long)]
        u64: bool,
    },
    /// Store VALUE at OFFSET of region NAME.
    Write {
        name: String,
        offset: u32,
        value: String,
    },
    /// Compare-and-swap: if the bytes at OFFSET equal EXPECTED, store NEW (exit 1 with the
    /// current bytes if not). A lock: `cas NAME 0 0 1` takes it, `cas NAME 0 1 0` frees it.
    Cas {
        name: String,
        offset: u32,
        expected: String,
        new: String,
    },
    /// Add 1 to the u64 counter at OFFSET of region NAME (a CAS loop); prints the new value.
    Incr { name: String, offset: u32 },
}

#[derive(Subcommand, Debug)]
enum TuneCommand {
    /// Check host settings against tutti's recommendations (exit 1 if any differs).
    Check {
        /// Print a JSON array instead of a table.
        #[arg(long)]
        json: bool,
        /// Cores the daemon's shards are pinned to (to check isolation and IRQs).
        #[arg(long, value_delimiter = ',', value_name = "LIST")]
        cores: Option<Vec<usize>>,
        /// tuttid's config file, to check its cluster exposure (a cluster listening beyond
        /// loopback without a key). Default: /etc/tutti/tuttid.toml when it exists.
        #[arg(long, value_name = "PATH")]
        config: Option<PathBuf>,
    },
}

fn connect(socket: &Option<PathBuf>) -> Result<Client, String> {
    match socket {
        Some(p) => Client::connect_to(p),
        None => Client::connect(),
    }
    .map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    let args = Args::parse();
    let result = match args.command {
        Command::Pub {
            group,
            ordered,
            safe,
            evs,
        } => publish(&args.socket, &group, options(ordered, safe, evs)),
        Command::Sub {
            group,
            ordered,
            safe,
            evs,
            count,
            idle_exit,
        } => subscribe(
            &args.socket,
            &group,
            options(ordered, safe, evs),
            count,
            idle_exit,
        ),
        Command::Status => connect(&args.socket)
            .and_then(|mut c| c.status().map_err(|e| e.to_string()))
            .map(|s| {
                print!("{s}");
                ExitCode::SUCCESS
            }),
        Command::Stat {
            interval,
            once,
            json,
            all,
        } => stat(&args.socket, interval, once, json, all),
        Command::Keygen { path } => keygen(&path),
        Command::Tune {
            what: TuneCommand::Check { json, cores, config },
        } => tune_check(json, cores.unwrap_or_default(), config),
        Command::Region { what } => region(&args.socket, what),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("tutti: {e}");
            ExitCode::FAILURE
        }
    }
}

/// A VALUE of `tutti region`: decimal u64 (little-endian), x:HEX or s:TEXT.
fn parse_value(v: &str) -> Result<Vec<u8>, String> {
    if let Some(text) = v.strip_prefix("s:") {
        return Ok(text.as_bytes().to_vec());
    }
    if let Some(hex) = v.strip_prefix("x:") {
        if hex.is_empty() || !hex.is_ascii() || hex.len() % 2 != 0 {
            return Err(format!("{v:?}: x: needs an even, non-zero number of hex digits"));
        }
        return (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).map_err(|_| format!("{v:?}: not hex")))
            .collect();
    }
    v.parse::<u64>()
        .map(|n| n.to_le_bytes().to_vec())
        .map_err(|_| format!("{v:?}: expected a decimal integer, x:HEX or s:TEXT"))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn region(socket: &Option<PathBuf>, what: RegionCommand) -> Result<ExitCode, String> {
    use tutti_client::{Minitx, MinitxError};
    let mut client = connect(socket)?;
    let err = |e: MinitxError| e.to_string();
    match what {
        RegionCommand::Create { name, size } => {
            client.region_create(&name, size).map_err(err)?;
            println!("region {name}: {size} bytes");
        }
        RegionCommand::Read {
            name,
            offset,
            len,
            u64,
        } => {
            let len = if u64 { 8 } else { len };
            let out = client
                .minitx(&Minitx::new().read(&name, offset, len))
                .map_err(err)?;
            let bytes = out.reads.first().cloned().unwrap_or_default();
            if u64 {
                let mut b = [0u8; 8];
                b.copy_from_slice(&bytes[..8.min(bytes.len())]);
                println!("{}", u64::from_le_bytes(b));
            } else {
                println!("{}", hex(&bytes));
            }
        }
        RegionCommand::Write { name, offset, value } => {
            let value = parse_value(&value)?;
            client
                .minitx(&Minitx::new().write(&name, offset, &value))
                .map_err(err)?;
        }
        RegionCommand::Cas {
            name,
            offset,
            expected,
            new,
        } => {
            let (expected, new) = (parse_value(&expected)?, parse_value(&new)?);
            let m = Minitx::new()
                .compare(&name, offset, &expected)
                .write(&name, offset, &new);
            match client.minitx(&m) {
                Ok(_) => println!("swapped"),
                Err(MinitxError::Conflict { failed, .. }) => {
                    let current = failed.first().map(|f| hex(&f.1)).unwrap_or_default();
                    eprintln!("tutti: compare failed: current bytes {current}");
                    return Ok(ExitCode::from(1));
                }
                Err(e) => return Err(e.to_string()),
            }
        }
        RegionCommand::Incr { name, offset } => {
            let mut value = 0u64;
            loop {
                let m = Minitx::new().compare(&name, offset, &value.to_le_bytes()).write(
                    &name,
                    offset,
                    &(value + 1).to_le_bytes(),
                );
                match client.minitx(&m) {
                    Ok(_) => {
                        println!("{}", value + 1);
                        break;
                    }
                    Err(MinitxError::Conflict { failed, .. }) => {
                        let mut b = [0u8; 8];
                        if let Some(f) = failed.first().filter(|f| f.1.len() == 8) {
                            b.copy_from_slice(&f.1);
                        }
                        value = u64::from_le_bytes(b);
                    }
                    Err(e) => return Err(e.to_string()),
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn options(ordered: bool, safe: bool, evs: bool) -> GroupOptions {
    GroupOptions {
        ordered: ordered || safe || evs,
        safe,
        cpg: false,
        evs,
    }
}

fn publish(socket: &Option<PathBuf>, group: &str, options: GroupOptions) -> Result<ExitCode, String> {
    let mut client = connect(socket)?;
    // Publish only: an access list may grant this user no subscribe right.
    let g = client
        .join_with(group, Rights::PUBLISH, options)
        .map_err(|e| e.to_string())?;
    let stdin = std::io::stdin();
    let mut line = Vec::new();
    let mut lock = stdin.lock();
    loop {
        line.clear();
        let n = lock
            .read_until(b'\n', &mut line)
            .map_err(|e| format!("reading standard input: {e}"))?;
        if n == 0 {
            break;
        }
        if line.last() == Some(&b'\n') {
            line.pop();
        }
        match client.offer_blocking(g, &line, IdleStrategy::Backoff, Duration::from_secs(10)) {
            Ok(()) => {}
            Err(OfferError::BackPressured) => return Err("tuttid took nothing for 10 s; giving up".into()),
            Err(e) => return Err(e.to_string()),
        }
    }
    if !client.flush(Duration::from_secs(10)).map_err(|e| e.to_string())? {
        return Err("tuttid did not take every message within 10 s".into());
    }
    Ok(ExitCode::SUCCESS)
}

fn subscribe(
    socket: &Option<PathBuf>,
    group: &str,
    options: GroupOptions,
    count: Option<u64>,
    idle_exit: Option<f64>,
) -> Result<ExitCode, String> {
    let mut client = connect(socket)?;
    // Subscribe only: an access list may grant this user no publish right.
    let g = client
        .join_with(group, Rights::SUBSCRIBE, options)
        .map_err(|e| e.to_string())?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut seen = 0u64;
    let wait = idle_exit.map_or(Duration::from_secs(3600), Duration::from_secs_f64);
    let mut write_error = None;
    loop {
        let n = client
            .poll_blocking(g, 256, IdleStrategy::Backoff, wait, |event| match event {
                Event::Message { payload, .. } => {
                    seen += 1;
                    let r = out.write_all(payload).and_then(|_| out.write_all(b"\n"));
                    if let Err(e) = r {
                        write_error = Some(e);
                    }
                }
                Event::Lagged { missed } => eprintln!("tutti: fell behind; {missed} messages skipped"),
                Event::Lost { sender, count } => {
                    eprintln!("tutti: {count} messages from sender {sender:#x} were lost in the cluster")
                }
                Event::View(view) => {
                    let r = writeln!(out, "# {}", view_line(&view));
                    if let Err(e) = r {
                        write_error = Some(e);
                    }
                }
                Event::Installed { position, snapshot } => {
                    let r = writeln!(
                        out,
                        "# installed snapshot at position {position} ({} bytes)",
                        snapshot.len()
                    );
                    if let Err(e) = r {
                        write_error = Some(e);
                    }
                }
                // This CLI keeps no state: with no provider registered the daemon sends the
                // joiner an empty snapshot.
                Event::SnapshotRequest { .. } => {}
                Event::Confchg(c) => {
                    let list = |it: &mut dyn Iterator<Item = tutti_client::CpgEntry>| {
                        it.map(|e| format!("{}:{}", e.node, e.pid))
                            .collect::<Vec<_>>()
                            .join(",")
                    };
                    let r = writeln!(
                        out,
                        "# confchg members={} joined={} left={}",
                        list(&mut c.members()),
                        list(&mut c.joined()),
                        list(&mut c.left())
                    );
                    if let Err(e) = r {
                        write_error = Some(e);
                    }
                }
            })
            .map_err(|e| e.to_string())?;
        if let Some(e) = write_error.take() {
            // A closed pipe (`tutti sub g | head`) is a normal way to stop.
            return if e.kind() == std::io::ErrorKind::BrokenPipe {
                Ok(ExitCode::SUCCESS)
            } else {
                Err(e.to_string())
            };
        }
        let _ = out.flush();
        if count.is_some_and(|c| seen >= c) {
            return Ok(ExitCode::SUCCESS);
        }
        if n == 0 && idle_exit.is_some() {
            return Ok(ExitCode::SUCCESS);
        }
    }
}

/// One line for a view of an ordered group: `view ID: members [..] joined [..] left [..]`
/// (members as daemon ids: a cluster node id is `daemon << 8 | shard`).
fn view_line(view: &ViewRecord<'_>) -> String {
    let ids =
        |it: &mut dyn Iterator<Item = u32>| it.map(|n| (n >> 8).to_string()).collect::<Vec<_>>().join(" ");
    let left: Vec<String> = view
        .left()
        .map(|(n, reason)| format!("{} ({})", n >> 8, reason_name(reason)))
        .collect();
    format!(
        "view {}: members [{}] joined [{}] left [{}]",
        view.id,
        ids(&mut view.members()),
        ids(&mut view.joined()),
        left.join(", ")
    )
}

fn reason_name(reason: LeftReason) -> String {
    match reason {
        LeftReason::Left => "left".into(),
        LeftReason::Suspected => "suspected".into(),
        LeftReason::Lagging => "lagging".into(),
        LeftReason::Other(n) => format!("reason {n}"),
    }
}

/// Default config path `tune check` reads when it exists.
const DEFAULT_CONFIG: &str = "/etc/tutti/tuttid.toml";

fn tune_check(json: bool, cores: Vec<usize>, config: Option<PathBuf>) -> Result<ExitCode, String> {
    let config = config.or_else(|| {
        let p = PathBuf::from(DEFAULT_CONFIG);
        p.exists().then_some(p)
    });
    let cluster = match &config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read config {}: {e}", path.display()))?;
            Some(
                tutti_tuning::ClusterExposure::from_config(&text)
                    .map_err(|e| format!("config {}: {e}", path.display()))?,
            )
        }
        None => None,
    };
    let opts = tutti_tuning::CheckOptions {
        shard_cores: cores,
        cluster,
        ..Default::default()
    };
    let checks = tutti_tuning::run_checks(&opts);
    if json {
        println!("{}", tutti_tuning::to_json(&checks));
    } else {
        print!("{}", tutti_tuning::render_table(&checks));
    }
    Ok(if checks.iter().all(|c| c.ok) {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// `tutti keygen PATH`: 32 bytes from /dev/urandom (the kernel's CSPRNG), written as
/// `tutti_wire::cluster_key` text to a file created with mode 0600 (never an existing one).
fn keygen(path: &std::path::Path) -> Result<ExitCode, String> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let mut key = [0u8; tutti_wire::cluster_key::KEY_LEN];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut key))
        .map_err(|e| format!("reading /dev/urandom: {e}"))?;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => format!(
                "{} exists: not overwriting a key (remove it first if you mean to replace it)",
                path.display()
            ),
            _ => format!("cannot create {}: {e}", path.display()),
        })?;
    file.write_all(tutti_wire::cluster_key::encode_key(&key).as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| format!("writing {}: {e}", path.display()))?;
    eprintln!(
        "tutti: wrote a new cluster key to {} (mode 0600). Copy it to every daemon (keeping the mode \
         and the daemon's user as owner) and set cluster.key_file.",
        path.display()
    );
    Ok(ExitCode::SUCCESS)
}

fn stat(
    socket: &Option<PathBuf>,
    interval: f64,
    once: bool,
    json: bool,
    all: bool,
) -> Result<ExitCode, String> {
    use std::io::IsTerminal;
    let mut client = connect(socket)?;
    // The shards' pages, then the control plane's (what was refused at attach and join).
    let mut shards = client.counters().map_err(|e| e.to_string())?;
    let shard_count = shards.len();
    shards.push(client.control_counters().map_err(|e| e.to_string())?);
    let interval = Duration::from_secs_f64(interval.max(0.05));
    let clear = !once && !json && std::io::stdout().is_terminal();
    let sample = || -> Vec<Vec<(&str, u64)>> { shards.iter().map(|s| s.values().collect()).collect() };
    let mut previous = sample();
    let mut last = std::time::Instant::now();
    // The table waits one interval first, so that every frame has rates.
    let mut first = !json;
    loop {
        if first {
            std::thread::sleep(interval);
            client.check_alive().map_err(|e| e.to_string())?;
            first = false;
        }
        let now = std::time::Instant::now();
        let secs = now.duration_since(last).as_secs_f64().max(1e-9);
        last = now;
        let current = sample();
        let mut out = String::new();
        if clear {
            out.push_str("\x1b[H\x1b[2J");
        }
        for (i, values) in current.iter().enumerate() {
            if json {
                let page: serde_json::Value = if i < shard_count {
                    i.into()
                } else {
                    "control".into()
                };
                let map: serde_json::Map<String, serde_json::Value> =
                    std::iter::once(("shard".to_string(), page))
                        .chain(values.iter().map(|(n, v)| (n.to_string(), (*v).into())))
                        .collect();
                out.push_str(&serde_json::Value::Object(map).to_string());
                out.push('\n');
                continue;
            }
            let title = if i < shard_count {
                format!("shard {i}")
            } else {
                "control".to_string()
            };
            out.push_str(&format!(
                "{title}   (rates over {secs:.1} s{})\n  {:<26} {:>16} {:>14}\n",
                if all {
                    ""
                } else {
                    "; counters at 0 not shown, --all shows them"
                },
                "counter",
                "value",
                "per second"
            ));
            for (k, (name, value)) in values.iter().enumerate() {
                if *name == "heartbeat" || (!all && *value == 0) {
                    continue;
                }
                let old = previous.get(i).and_then(|p| p.get(k)).map_or(*value, |(_, v)| *v);
                let rate = if is_gauge(name) {
                    String::from("(gauge)")
                } else {
                    format!("{:.0}", value.saturating_sub(old) as f64 / secs)
                };
                out.push_str(&format!("  {name:<26} {value:>16} {rate:>14}\n"));
            }
        }
        print!("{out}");
        let _ = std::io::stdout().flush();
        if once {
            return Ok(ExitCode::SUCCESS);
        }
        previous = current;
        std::thread::sleep(interval);
        client.check_alive().map_err(|e| e.to_string())?;
    }
}

/// A counter that is a level (clients, members, bytes held), not a count of events.
fn is_gauge(name: &str) -> bool {
    tutti_wire::counters::SHARD_COUNTERS
        .iter()
        .any(|(n, what)| *n == name && what.contains("(gauge"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_view_prints_as_one_line_of_daemon_ids() {
        // id 7; members 256, 512; joined 512; left 768 (suspected).
        let mut b = Vec::new();
        b.extend_from_slice(&7u64.to_le_bytes());
        for n in [2u32, 1, 1, 256, 512, 512, 768, 2] {
            b.extend_from_slice(&n.to_le_bytes());
        }
        let view = ViewRecord::parse(&b).unwrap();
        assert_eq!(
            view_line(&view),
            "view 7: members [1 2] joined [2] left [3 (suspected)]"
        );
        assert_eq!(options(false, true, false), GroupOptions::SAFE);
        assert_eq!(options(true, false, false), GroupOptions::ORDERED);
        let evs = options(false, false, true);
        assert!(evs.ordered && evs.evs && !evs.safe);
        assert_eq!(GroupOptions::from_u8(evs.to_u8()), Ok(evs));
    }
}
