//! The `meshgate` command: argument parsing and logging set-up; the work is in the library crates.
#![forbid(unsafe_code)]

mod ca;
mod demo;
mod demo_consul;
mod logging;
mod plugin_cmd;

use clap::{Parser, Subcommand, ValueEnum};
use std::path::PathBuf;
use std::process::ExitCode;

/// A mesh gateway: routes mutual-TLS connections between datacenters by SNI, without decrypting.
#[derive(Parser, Debug)]
#[command(
    name = "meshgate",
    version,
    after_help = "Examples:\n  meshgate demo                                  two datacenters on loopback, with traffic\n  meshgate gateway --config configs/demo/dc1-gateway.toml\n  meshgate check configs/gateway.example.toml    validate a file, print what it means\n  kill -HUP <pid>                                reload the config (live connections stay)\n  curl -s 127.0.0.1:19000/metrics                Prometheus metrics"
)]
struct Cli {
    /// Log level or filter (e.g. `info`, `debug`, `meshgate::access=warn,info`).
    #[arg(long, global = true, env = "MESHGATE_LOG", default_value = "info")]
    log_level: String,
    /// Log format.
    #[arg(long, global = true, env = "MESHGATE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Copy, Clone, Debug, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a mesh gateway. SIGHUP reloads the config; SIGTERM/SIGINT drain and exit.
    Gateway {
        /// Configuration file (TOML).
        #[arg(long, short)]
        config: PathBuf,
        /// Register this gateway in the local Consul agent (as `consul connect envoy -gateway=mesh
        /// -register` does), with `[consul.register]`'s settings or their defaults; deregistered after
        /// the drain on SIGTERM.
        #[arg(long)]
        register: bool,
    },
    /// Validate a configuration file: exit 0 when valid, else print file:line:column: field: error.
    Check {
        /// Configuration file.
        file: PathBuf,
    },
    /// Start two datacenters' gateways and backends on loopback, send traffic through them, and show
    /// what happened. Keeps running until Ctrl-C unless --once.
    Demo {
        /// Exit after the traffic round instead of serving until Ctrl-C.
        #[arg(long)]
        once: bool,
        /// Take everything from two real Consul dev agents (needs a `consul` 1.8 binary).
        #[arg(long)]
        consul: bool,
    },
    /// Run one service's sidecar: mTLS in (identity, intentions) and out (upstreams by gateway mode).
    /// Certificate and catalog changes apply without a restart; SIGTERM/SIGINT drain and exit.
    Sidecar {
        /// Sidecar configuration file (TOML).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Probe a running gateway's or sidecar's admin endpoint: exit 0 when `GET /ready` answers 200
    /// within the deadline, else 1 with the reason. The image's HEALTHCHECK runs it (no curl needed).
    Health {
        /// The admin endpoint (`[gateway] admin` or `[sidecar] admin` of the config it runs).
        #[arg(long, env = "MESHGATE_ADMIN", default_value = "127.0.0.1:19000")]
        admin: std::net::SocketAddr,
        /// The path to ask for.
        #[arg(long, default_value = "/ready")]
        path: String,
        /// Seconds the whole exchange may take.
        #[arg(long, default_value_t = meshgate_admin::PROBE_DEADLINE.as_secs_f64())]
        timeout: f64,
    },
    /// Write plugins: make a new plugin crate, build it into a component.
    Plugin {
        #[command(subcommand)]
        command: plugin_cmd::PluginCommand,
    },
    /// The mesh certificate authority: create a root, sign a datacenter intermediate, issue leaves.
    Ca {
        #[command(subcommand)]
        command: ca::CaCommand,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The demo prints its own story; per-connection logs would drown it unless asked for.
    let level = match (&cli.command, std::env::var_os("MESHGATE_LOG")) {
        (Command::Demo { .. }, None) if cli.log_level == "info" => "warn".to_owned(),
        _ => cli.log_level.clone(),
    };
    let filter = tracing_subscriber::EnvFilter::try_new(&level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Flushes the queued log lines when main returns.
    let _log = logging::init(filter, matches!(cli.log_format, LogFormat::Json));
    // The data planes need io_uring; say so plainly before reading configs or starting anything (glommio
    // itself would panic in a core thread with a misleading message).
    if matches!(
        cli.command,
        Command::Gateway { .. } | Command::Demo { .. } | Command::Sidecar { .. }
    ) {
        if let Err(e) = meshgate_engine::cores::probe_io_uring() {
            tracing::error!(error = %e, "cannot start");
            eprintln!("meshgate: {e}");
            return ExitCode::FAILURE;
        }
    }
    let daemon = matches!(
        cli.command,
        Command::Gateway { .. } | Command::Sidecar { .. }
    );
    let result = match cli.command {
        Command::Gateway { config, register } => meshgate_control::gateway::run(&config, register),
        Command::Check { file } => {
            meshgate_control::inspect::check(&file).map(|text| print!("{text}"))
        }
        Command::Demo { once, consul } => {
            return if consul {
                demo_consul::run(once)
            } else {
                demo::run(once)
            }
        }
        Command::Ca { command } => return ca::run(command),
        Command::Plugin { command } => return plugin_cmd::run(command),
        Command::Health {
            admin,
            path,
            timeout,
        } => {
            let deadline = std::time::Duration::try_from_secs_f64(timeout)
                .unwrap_or(meshgate_admin::PROBE_DEADLINE);
            return match meshgate_admin::probe(admin, &path, deadline) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("meshgate health: {e}");
                    ExitCode::FAILURE
                }
            };
        }
        Command::Sidecar { config } => meshgate_control::sidecar::run(&config),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if daemon {
                tracing::error!(error = %e, "cannot run");
            }
            eprintln!("{e}");
            ExitCode::from(e.exit_code())
        }
    }
}
