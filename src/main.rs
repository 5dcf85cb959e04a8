//! authgate: a reverse-proxy authentication gateway on Pingora.
//!
//! CLI: `authgate [--config FILE]` (or `authgate run [--upgrade]`) runs the gateway; `authgate check --config FILE` validates a
//! config and exits; `authgate migrate --config FILE` applies database migrations and exits;
//! `authgate assertion rotate --config FILE` rotates the identity assertion's signing key.

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
    /// The identity assertion's signing keys (`[assertion]`).
    Assertion {
        #[command(subcommand)]
        command: AssertionCommand,
    },
}

#[derive(Subcommand)]
enum AssertionCommand {
    /// Add a new signing key to the database and retire the current one; running gateways
    /// sign with the new key within seconds, and keep publishing the old one until its
    /// assertions have expired.
    Rotate,
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
        Command::Assertion {
            command: AssertionCommand::Rotate,
        } => server::rotate_assertion_key(config),
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
