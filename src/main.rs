//! authgate: a reverse-proxy authentication gateway on Pingora.
//!
//! CLI: `authgate [--config FILE]` (or `authgate run [--upgrade]`) runs the gateway; `authgate check --config FILE` validates a
//! config and exits; `authgate migrate --config FILE` applies database migrations and exits;
//! `authgate assertion rotate --config FILE` rotates the identity assertion's signing key;
//! `authgate user …` and `authgate sessions …` are the operator commands (`operator.rs`).

use std::path::PathBuf;
use std::process::ExitCode;

use authgate::config::Config;
use authgate::operator;
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
    /// Accounts: list, add, disable, enable, and roles. Running gateways honour a change at once.
    User {
        #[command(subcommand)]
        command: UserCommand,
    },
    /// A user's live sessions: list or revoke them (every gateway honours it at once).
    Sessions {
        #[command(subcommand)]
        command: SessionsCommand,
    },
}

#[derive(Subcommand)]
enum UserCommand {
    /// Every account, with its status and roles.
    List {
        /// Print JSON (an array of users) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Create an account (the registration policy does not apply). Without --password-stdin a
    /// password is generated and printed once.
    Add {
        #[arg(long)]
        email: String,
        /// Read the password from the first line of stdin.
        #[arg(long)]
        password_stdin: bool,
    },
    /// Refuse the account's sign-ins (403 account_disabled) and end all its sessions.
    Disable {
        #[arg(long)]
        email: String,
    },
    /// Allow the account to sign in again.
    Enable {
        #[arg(long)]
        email: String,
    },
    /// Give the user a role (for `allow = ["role:NAME"]`, X-User-Roles and the assertion).
    SetRole {
        #[arg(long)]
        email: String,
        #[arg(long)]
        role: String,
    },
    /// Take a role from the user.
    RemoveRole {
        #[arg(long)]
        email: String,
        #[arg(long)]
        role: String,
    },
}

#[derive(Subcommand)]
enum SessionsCommand {
    /// The user's live sessions.
    List {
        #[arg(long)]
        email: String,
        /// Print JSON (an array of sessions) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// End every session of the user.
    Revoke {
        #[arg(long)]
        email: String,
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
        Command::User { command } => operator::run(
            config,
            &cli.config,
            match command {
                UserCommand::List { json } => operator::Command::UserList { json },
                UserCommand::Add {
                    email,
                    password_stdin,
                } => operator::Command::UserAdd {
                    email,
                    password_stdin,
                },
                UserCommand::Disable { email } => operator::Command::UserDisable { email },
                UserCommand::Enable { email } => operator::Command::UserEnable { email },
                UserCommand::SetRole { email, role } => {
                    operator::Command::UserSetRole { email, role }
                }
                UserCommand::RemoveRole { email, role } => {
                    operator::Command::UserRemoveRole { email, role }
                }
            },
        ),
        Command::Sessions { command } => operator::run(
            config,
            &cli.config,
            match command {
                SessionsCommand::List { email, json } => {
                    operator::Command::SessionsList { email, json }
                }
                SessionsCommand::Revoke { email } => operator::Command::SessionsRevoke { email },
            },
        ),
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
