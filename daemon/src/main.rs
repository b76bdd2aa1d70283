//! `tuttid`: the tutti messaging daemon.

use clap::Parser;
use std::path::PathBuf;
use std::process::ExitCode;
use tutti_daemon::config::{Config, IdleStrategy};

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
    /// Node id of this daemon in the cluster.
    #[arg(long)]
    node_id: Option<u32>,
    /// Bytes per client publish ring (power of two).
    #[arg(long, value_name = "BYTES")]
    publish_ring_bytes: Option<usize>,
    /// Bytes per group delivery log (power of two).
    #[arg(long, value_name = "BYTES")]
    log_bytes: Option<usize>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(path) = &args.check_config {
        return match Config::load(path) {
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
    if let Some(s) = args.socket {
        config.socket = Some(s);
    }
    if let Some(c) = args.cores {
        config.cores = c;
    }
    config.no_pin |= args.no_pin;
    if let Some(i) = args.idle {
        config.idle = i;
    }
    if let Some(n) = args.node_id {
        config.node_id = n;
    }
    if let Some(b) = args.publish_ring_bytes {
        config.publish_ring_bytes = b;
    }
    if let Some(b) = args.log_bytes {
        config.log_bytes = b;
    }
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&config.log));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    match tutti_daemon::run(config) {
        Ok(code) => ExitCode::from(code as u8),
        Err(e) => {
            eprintln!("tuttid: {e}");
            ExitCode::FAILURE
        }
    }
}
