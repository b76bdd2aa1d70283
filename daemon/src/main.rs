//! `tuttid`: the tutti messaging daemon.
#![forbid(unsafe_code)]

/// mimalloc, not glibc's malloc: an ordered group's append (a minitransaction of up to
/// 48 KiB, its encoding, fragments, redo record and replies) still allocates, and glibc
/// serves buffers past its thread cache from shared bins (`malloc_consolidate`,
/// `unlink_chunk`): 25-30% of the sending shard's time in a CPG flood. mimalloc's
/// per-thread pages gave that flood 16% more messages per second (docs/cpg.md, "The
/// allocator"). The bimodal data path allocates nothing per message either way.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::Parser;
use std::path::PathBuf;
use std::process::ExitCode;
use tutti_daemon::config::{Config, IdleStrategy};
use tutti_daemon::supervise::{SetLogFilter, Supervisor};

/// tutti messaging daemon: local applications attach over shared memory and publish to
/// process groups. Runs on built-in defaults when given no options.
#[derive(Parser, Debug)]
#[command(name = "tuttid", version, about)]
struct Args {
    /// TOML config file (every key is optional; see tuttid.example.toml).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Validate the config file and exit (0 = valid).
    #[arg(long, value_name = "FILE")]
    check_config: Option<PathBuf>,
    /// Control socket path (default: $TUTTI_SOCKET, $XDG_RUNTIME_DIR/tutti/tuttid.sock,
    /// /run/tutti/tuttid.sock as root, else /tmp/tutti-$USER/tuttid.sock).
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Cores to run shards on, one shard each, e.g. "1" or "2,3".
    #[arg(long, value_delimiter = ',', value_name = "LIST")]
    cores: Option<Vec<usize>>,
    /// Don't pin shard threads to their cores.
    #[arg(long)]
    no_pin: bool,
    /// Idle strategy: "spin" (lowest latency, a core at 100%) or "backoff" (~0% CPU idle).
    #[arg(long, value_name = "STRATEGY")]
    idle: Option<IdleStrategy>,
    /// With --idle backoff: microseconds a shard keeps polling after its last data before it
    /// parks (default 5; 0 parks at once).
    #[arg(long, value_name = "US")]
    spin_after_data_us: Option<u64>,
    /// After data, keep idle CPUs polling (not halting) for this many milliseconds: a
    /// request for 0 wake-up latency on /dev/cpu_dma_latency (needs root). Default 0: never.
    #[arg(long, value_name = "MS")]
    cpu_poll_after_data_ms: Option<u64>,
    /// This daemon's id in the cluster, 1 to 16777215. Unset: the low 24 bits of an IPv4
    /// --listen address (127.0.0.3 gives 3; daemons sharing an address need their own ids),
    /// else a random id kept in the state directory. Two daemons with one id are refused by
    /// their peers, which log both addresses.
    #[arg(long, value_name = "ID")]
    node_id: Option<u32>,
    /// Bytes per client publish ring (power of two).
    #[arg(long, value_name = "BYTES")]
    publish_ring_bytes: Option<usize>,
    /// Bytes per group delivery log (power of two).
    #[arg(long, value_name = "BYTES")]
    log_bytes: Option<usize>,
    /// Join a cluster: the address shards listen on for UDP, as IP or IP:PORT (shard i
    /// listens on PORT + i; PORT defaults to --base-port, 7400). IPv6 with a port: [IP]:PORT.
    #[arg(long, value_name = "IP[:PORT]", value_parser = parse_listen)]
    listen: Option<(std::net::IpAddr, Option<u16>)>,
    /// First UDP port (default 7400).
    #[arg(long, value_name = "PORT")]
    base_port: Option<u16>,
    /// A daemon to contact, as HOST or HOST:PORT (its id is learned from its first
    /// answer), or ID@HOST[:PORT]; repeat for several (listing this daemon itself is fine).
    /// Joins a cluster.
    #[arg(long = "seed", value_name = "[ID@]HOST[:PORT]")]
    seeds: Vec<String>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(path) = &args.check_config {
        return match Config::load(path).and_then(|c| c.cluster.load_keys().map(|_| c)) {
            Ok(_) => {
                println!("{}: ok", path.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("tuttid: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let mut config = match &args.config {
        Some(path) => match Config::load(path) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("tuttid: {e}");
                return ExitCode::FAILURE;
            }
        },
        None => Config::default(),
    };
    let overrides = Overrides::from(&args);
    overrides.apply(&mut config);
    use tracing_subscriber::prelude::*;
    let from_env = std::env::var("RUST_LOG").is_ok();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&config.log))
        .unwrap_or_else(|e| {
            eprintln!("tuttid: log = {:?}: {e}; using \"info\"", config.log);
            tracing_subscriber::EnvFilter::new("info")
        });
    let (filter, reload) = tracing_subscriber::reload::Layer::new(filter);
    tracing_subscriber::registry()
        .with(filter)
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())),
        )
        .init();
    // RUST_LOG, when set, wins over the file on reload too.
    let set_log_filter: Option<SetLogFilter> = (!from_env).then(|| {
        Box::new(move |f: &str| {
            let filter = tracing_subscriber::EnvFilter::try_new(f).map_err(|e| e.to_string())?;
            reload.reload(filter).map_err(|e| e.to_string())
        }) as SetLogFilter
    });
    let supervisor = Supervisor::new(
        args.config.clone(),
        set_log_filter,
        Box::new(move |c| overrides.apply(c)),
    );
    match tutti_daemon::run(config, supervisor) {
        Ok(code) => ExitCode::from(code as u8),
        Err(e) => {
            eprintln!("tuttid: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `--listen`: an IP address, or IP:PORT (`[IPv6]:PORT`).
fn parse_listen(s: &str) -> Result<(std::net::IpAddr, Option<u16>), String> {
    if let Ok(ip) = s.parse() {
        return Ok((ip, None));
    }
    s.parse::<std::net::SocketAddr>()
        .map(|a| (a.ip(), Some(a.port())))
        .map_err(|_| format!("{s:?} is not IP or IP:PORT (IPv6 with a port: [IP]:PORT)"))
}

/// The command-line settings that override the config file, kept to re-apply on reload.
#[derive(Debug, Clone)]
struct Overrides {
    socket: Option<PathBuf>,
    cores: Option<Vec<usize>>,
    no_pin: bool,
    idle: Option<IdleStrategy>,
    spin_after_data_us: Option<u64>,
    cpu_poll_after_data_ms: Option<u64>,
    node_id: Option<u32>,
    publish_ring_bytes: Option<usize>,
    log_bytes: Option<usize>,
    listen: Option<(std::net::IpAddr, Option<u16>)>,
    base_port: Option<u16>,
    seeds: Vec<String>,
}

impl Overrides {
    fn from(args: &Args) -> Overrides {
        Overrides {
            socket: args.socket.clone(),
            cores: args.cores.clone(),
            no_pin: args.no_pin,
            idle: args.idle,
            spin_after_data_us: args.spin_after_data_us,
            cpu_poll_after_data_ms: args.cpu_poll_after_data_ms,
            node_id: args.node_id,
            publish_ring_bytes: args.publish_ring_bytes,
            log_bytes: args.log_bytes,
            listen: args.listen,
            base_port: args.base_port,
            seeds: args.seeds.clone(),
        }
    }

    fn apply(&self, config: &mut Config) {
        if let Some(s) = &self.socket {
            config.socket = Some(s.clone());
        }
        if let Some(c) = &self.cores {
            config.cores = c.clone();
        }
        config.no_pin |= self.no_pin;
        if let Some(i) = self.idle {
            config.idle = i;
        }
        if let Some(us) = self.spin_after_data_us {
            config.spin_after_data_us = us;
        }
        if let Some(ms) = self.cpu_poll_after_data_ms {
            config.cpu_poll_after_data_ms = ms;
        }
        if let Some(n) = self.node_id {
            config.node_id = n;
        }
        if let Some(b) = self.publish_ring_bytes {
            config.publish_ring_bytes = b;
        }
        if let Some(b) = self.log_bytes {
            config.log_bytes = b;
        }
        if let Some((ip, port)) = self.listen {
            config.net.listen = ip;
            if let Some(p) = port {
                config.net.base_port = p;
            }
            config.cluster.enabled = true;
        }
        if let Some(p) = self.base_port {
            config.net.base_port = p;
        }
        if !self.seeds.is_empty() {
            config.cluster.seeds = self.seeds.clone();
            config.cluster.enabled = true;
        }
    }
}
