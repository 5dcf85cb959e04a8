//! authgate: a reverse-proxy authentication gateway on Pingora.
//!
//! CLI: `authgate [--config FILE]` (or `authgate run [--upgrade]`) runs the gateway; `authgate check --config FILE` validates a
//! config and exits; `authgate migrate --config FILE` applies database migrations and exits.

use std::path::PathBuf;
use std::process::ExitCode;

use authgate::config::Config;
use authgate::server;
use clap::{Parser, Subcommand};

/// mimalloc instead of the system allocator: a proxied request allocates and frees many small
/// buffers, often on different threads (a log line is formatted on a proxy thread and freed
/// on the log thread), where glibc's malloc contends on its arena locks. Measured with
/// `bench/run` (bench/RESULTS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "authgate",
    version,
    about = "Reverse-proxy authentication gateway"
)]
struct Cli {
    /// The gateway.toml to run with.
    #[arg(long, short, global = true, default_value = "gateway.toml")]
    config: PathBuf,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway (the default).
    Run {
        /// Graceful binary upgrade: take over the listening sockets of the running authgate
        /// (through `server.upgrade_sock`), then send it SIGQUIT to hand them over and drain.
        #[arg(long, short = 'u')]
        upgrade: bool,
    },
    /// Validate the config file and exit: 0 if valid, 1 with the offending key if not.
    Check,
    /// Apply database migrations and exit.
    Migrate,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match Config::load(&cli.config) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("authgate: invalid configuration: {error}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = match cli.command.unwrap_or(Command::Run { upgrade: false }) {
        Command::Check => {
            println!("{}: configuration is valid", cli.config.display());
            Ok(())
        }
        Command::Migrate => server::migrate(config),
        Command::Run { upgrade } => server::run(
            config,
            server::RunOptions {
                config_path: cli.config,
                upgrade,
            },
        ),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("authgate: {error:#}");
            ExitCode::FAILURE
        }
    }
}
