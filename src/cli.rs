//! The command line (clap): `serve` (the default), `user …` and `check-config`. Exit
//! codes: 0 done, 1 failed, 2 bad usage or configuration. Secrets printed for the
//! operator (a new API key) go alone on stdout; everything else goes to stderr.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::config::{Config, Overrides};
use crate::store::users::Role;
use crate::store::Store;
use crate::users::{render_list, Admin, UserChanges};

#[derive(Debug, Parser)]
#[command(
    name = "fleetgroups",
    version,
    about = "Self-hosted server for the Plaspy Groups API"
)]
pub struct Cli {
    /// Configuration file (default: ./config.toml when present; env FLEETGROUPS_CONFIG).
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Data directory (env FLEETGROUPS_DATA_DIR; default ./data).
    #[arg(long, global = true, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server (the default when no command is given).
    Serve(ServeArgs),
    /// Manage users and their API keys.
    #[command(subcommand)]
    User(UserCommand),
    /// Validate the configuration and print the effective values (secrets redacted).
    CheckConfig,
}

#[derive(Debug, Args, Default)]
struct ServeArgs {
    /// Address to listen on, e.g. 127.0.0.1:8080 (env FLEETGROUPS_LISTEN).
    #[arg(long, value_name = "ADDR")]
    listen: Option<String>,
}

#[derive(Debug, Subcommand)]
enum UserCommand {
    /// Create a user and print its API key alone on stdout.
    Add {
        name: String,
        #[arg(long, default_value = "default")]
        account: String,
        #[arg(long, default_value = "write", value_parser = parse_role)]
        role: Role,
        /// Requests per UTC day; omit for the configured default.
        #[arg(long, value_name = "N")]
        daily_limit: Option<u64>,
    },
    /// List users with their counters.
    List,
    /// Give a user a new API key; the old key and its tokens stop working at once.
    RotateKey { name: String },
    /// Change a user's role, daily limit or disabled flag.
    Set {
        name: String,
        #[arg(long, value_parser = parse_role)]
        role: Option<Role>,
        /// A number, or `none` to use the configured default.
        #[arg(long, value_name = "N|none", value_parser = parse_limit)]
        daily_limit: Option<Option<u64>>,
        #[arg(long, value_name = "true|false")]
        disabled: Option<bool>,
    },
    /// Remove a user and its tokens (its account's groups stay).
    Remove { name: String },
}

fn parse_role(s: &str) -> Result<Role, String> {
    s.parse()
}

fn parse_limit(s: &str) -> Result<Option<u64>, String> {
    if s == "none" {
        return Ok(None);
    }
    s.parse::<u64>()
        .map(Some)
        .map_err(|_| format!("expected a number or none, got {s:?}"))
}

/// Parses the arguments and runs the command.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let listen = match &cli.command {
        Some(Command::Serve(a)) => a.listen.clone(),
        _ => None,
    };
    let overrides = Overrides {
        config_file: cli.config.clone(),
        data_dir: cli.data_dir.clone(),
        listen,
    };
    let config = match Config::load(&overrides) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("fleetgroups: {e}");
            return ExitCode::from(2);
        }
    };
    match cli.command {
        None => serve(config),
        Some(Command::Serve(_)) => serve(config),
        Some(Command::CheckConfig) => {
            // The TLS files are part of the configuration: a start would refuse them.
            if let Err(e) = crate::tls::acceptor(&config.tls) {
                eprintln!("fleetgroups: {e}");
                return ExitCode::from(2);
            }
            print!("{}", config.to_redacted_toml());
            eprintln!("configuration is valid");
            ExitCode::SUCCESS
        }
        Some(Command::User(cmd)) => run_user(&config, cmd),
    }
}

fn serve(config: Config) -> ExitCode {
    crate::server::run(config)
}

fn run_user(config: &Config, cmd: UserCommand) -> ExitCode {
    let store = match Store::open(&config.data_dir, &crate::app::store_options(config)) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("fleetgroups: {e}");
            return ExitCode::FAILURE;
        }
    };
    let admin = Admin::offline(&store);
    let result = match cmd {
        UserCommand::Add {
            name,
            account,
            role,
            daily_limit,
        } => admin.add(&name, &account, role, daily_limit).map(|key| {
            println!("{key}");
            eprintln!("created user {name} (account {account}, role {role}); the line above is its API key, shown only now");
        }),
        UserCommand::List => admin.list().map(|rows| print!("{}", render_list(&rows))),
        UserCommand::RotateKey { name } => admin.rotate_key(&name).map(|key| {
            println!("{key}");
            eprintln!("rotated the key of {name}; the old key and its tokens no longer work");
        }),
        UserCommand::Set {
            name,
            role,
            daily_limit,
            disabled,
        } => {
            let changes = UserChanges {
                role,
                daily_limit,
                disabled,
            };
            admin.set(&name, &changes).map(|u| {
                eprintln!(
                    "updated {name}: role {}, daily limit {}, disabled {}",
                    u.role,
                    u.daily_limit.map_or_else(|| "none".to_string(), |l| l.to_string()),
                    u.disabled
                );
            })
        }
        UserCommand::Remove { name } => admin.remove(&name).map(|()| {
            eprintln!("removed user {name}; its account's groups stay");
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fleetgroups: {e}");
            ExitCode::FAILURE
        }
    }
}
