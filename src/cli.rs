//! The command line (clap): `serve` (the default), `user …`, `backup`, `restore`,
//! `check-config` and `healthcheck`. Exit codes: 0 done, 1 failed, 2 bad usage or
//! configuration. Secrets printed for the operator (a new API key) go alone on stdout; everything else goes to
//! stderr. `user …` and `backup` go through the admin socket when a server answers on
//! it and open the store themselves otherwise (admin.rs runs both the same way).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::admin::{ClientError, Command as AdminCommand, LimitChange, Outcome};
use crate::config::{Config, Overrides};
use crate::store::users::Role;
use crate::store::{OpenError, Store};

#[derive(Debug, Parser)]
#[command(
    name = "fleetgroups",
    version = crate::build_info::LONG,
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
    /// Write a consistent snapshot of everything to FILE (JSON Lines, mode 0600).
    Backup {
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
    /// Load a backup into an empty data directory.
    Restore {
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
    /// Validate the configuration and print the effective values (secrets redacted).
    CheckConfig,
    /// Exit 0 when /readyz on the configured listen address answers 200 within 3 s,
    /// else 1 (for container and monitor probes; no curl needed).
    Healthcheck,
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
        /// 1-64 of A-Z a-z 0-9 . _ @ -
        #[arg(value_parser = parse_name)]
        name: String,
        /// The tenant whose groups the user sees (same characters as a name).
        #[arg(long, default_value = "default", value_parser = parse_name)]
        account: String,
        #[arg(long, default_value = "write", value_parser = parse_role)]
        role: Role,
        /// Requests per UTC day (at least 1); omit for the configured default.
        #[arg(long, value_name = "N", value_parser = parse_daily_limit)]
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
        /// A number (at least 1), or `none` to use the configured default.
        #[arg(long, value_name = "N|none", value_parser = parse_limit)]
        daily_limit: Option<LimitSetting>,
        #[arg(long, value_name = "true|false")]
        disabled: Option<bool>,
    },
    /// Remove a user and its tokens (its account's groups stay).
    Remove { name: String },
}

fn parse_role(s: &str) -> Result<Role, String> {
    s.parse()
}

/// A user or account name is checked while parsing, so a bad one is a usage error
/// (exit 2) like any other malformed argument.
fn parse_name(s: &str) -> Result<String, String> {
    if crate::auth::valid_name(s) {
        Ok(s.to_string())
    } else {
        Err("use 1-64 of A-Z a-z 0-9 . _ @ -".into())
    }
}

/// A personal daily limit. 0 is refused rather than guessed at: the configuration's
/// `limits.daily_limit = 0` means "no limit", a personal 0 would mean "no requests",
/// and `--disabled true` already says that plainly.
fn parse_daily_limit(s: &str) -> Result<u64, String> {
    match s.parse::<u64>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err("expected a whole number of requests, at least 1".into()),
    }
}

/// The value of `user set --daily-limit`: a limit, or `none` for the configured default.
///
/// A newtype because clap's derive reads `Option<Option<T>>` as "a flag whose value
/// may be omitted", which does not match this parser's output type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct LimitSetting(Option<u64>);

fn parse_limit(s: &str) -> Result<LimitSetting, String> {
    if s == "none" {
        return Ok(LimitSetting(None));
    }
    parse_daily_limit(s)
        .map(|n| LimitSetting(Some(n)))
        .map_err(|e| format!("{e}, or none"))
}

/// Parses the arguments and runs the command.
pub fn main() -> ExitCode {
    // Before anything can create a file: the data directory's files are owner-only.
    crate::perms::restrict_umask();
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
            say(&format!("fleetgroups: {e}\n"));
            // A probe reports every failure as 1: Docker reserves exit code 2.
            if matches!(cli.command, Some(Command::Healthcheck)) {
                return ExitCode::FAILURE;
            }
            return ExitCode::from(2);
        }
    };
    match cli.command {
        None | Some(Command::Serve(_)) => serve(config, overrides),
        Some(Command::CheckConfig) => {
            // The TLS files are part of the configuration: a start would refuse them.
            if let Err(e) = crate::tls::acceptor(&config.tls) {
                say(&format!("fleetgroups: {e}\n"));
                return ExitCode::from(2);
            }
            if let Err(e) = print(&config.to_redacted_toml()) {
                say(&format!("fleetgroups: cannot write to stdout: {e}\n"));
                return ExitCode::FAILURE;
            }
            if let Some(note) = config.ignored_env_note() {
                say(&format!("fleetgroups: {note}\n"));
            }
            say("configuration is valid\n");
            ExitCode::SUCCESS
        }
        Some(Command::User(cmd)) => run_admin(&config, user_command(cmd)),
        Some(Command::Backup { file }) => match std::path::absolute(&file) {
            Ok(file) => run_admin(&config, AdminCommand::Backup { file }),
            Err(e) => {
                say(&format!("fleetgroups: {}: {e}\n", file.display()));
                ExitCode::FAILURE
            }
        },
        Some(Command::Restore { file }) => restore(&config, &file),
        Some(Command::Healthcheck) => match crate::healthcheck::probe(&config) {
            Ok(note) => {
                say(&format!("{note}\n"));
                ExitCode::SUCCESS
            }
            Err(e) => {
                say(&format!("fleetgroups: unhealthy: {}\n", e.0));
                ExitCode::FAILURE
            }
        },
    }
}

fn serve(config: Config, overrides: Overrides) -> ExitCode {
    let code = crate::server::run(config, overrides);
    // The log writer thread dies with the process: let it write what is queued.
    crate::log::flush();
    code
}

/// Writes to stdout. Not `print!`, which panics (exit 101) when stdout is a closed pipe
/// or a full disk: the caller turns the error into exit code 1.
fn print(text: &str) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()
}

/// Writes a message to stderr, ignoring failure: the exit code still tells the outcome,
/// and `eprint!` would panic instead.
fn say(text: &str) {
    let _ = std::io::stderr().write_all(text.as_bytes());
}

fn user_command(cmd: UserCommand) -> AdminCommand {
    match cmd {
        UserCommand::Add {
            name,
            account,
            role,
            daily_limit,
        } => AdminCommand::UserAdd {
            name,
            account,
            role,
            daily_limit,
        },
        UserCommand::List => AdminCommand::UserList,
        UserCommand::RotateKey { name } => AdminCommand::UserRotateKey { name },
        UserCommand::Set {
            name,
            role,
            daily_limit,
            disabled,
        } => AdminCommand::UserSet {
            name,
            role,
            daily_limit: daily_limit.map(|l| LimitChange { limit: l.0 }),
            disabled,
        },
        UserCommand::Remove { name } => AdminCommand::UserRemove { name },
    }
}

/// Runs a command through the running server's admin socket, or on the store directly
/// when no server answers there.
fn run_admin(config: &Config, command: AdminCommand) -> ExitCode {
    let socket = config.admin_socket();
    let outcome = match crate::admin::request(&socket, &command) {
        Ok(outcome) => outcome,
        Err(ClientError::Failed(why)) => Outcome::failed(1, why),
        Err(ClientError::NotRunning(why)) => offline(config, &command, &why),
    };
    let printed = print(&outcome.stdout);
    say(&outcome.stderr);
    match printed {
        // The command's result (for `user add` and `rotate-key`, the only copy of a new
        // API key) did not reach its reader: that is a failure, whatever the command did.
        Err(e) if !outcome.stdout.is_empty() => {
            say(&format!(
                "fleetgroups: cannot write the result to stdout: {e}{}\n",
                if matches!(
                    command,
                    AdminCommand::UserAdd { .. } | AdminCommand::UserRotateKey { .. }
                ) {
                    " (the new API key is lost: run `user rotate-key` for another)"
                } else {
                    ""
                }
            ));
            ExitCode::FAILURE
        }
        _ => ExitCode::from(outcome.code),
    }
}

/// The server is not answering: open the store (which fails if a server holds it).
fn offline(config: &Config, command: &AdminCommand, socket_error: &str) -> Outcome {
    if matches!(command, AdminCommand::Backup { .. }) && !config.data_dir.join("store").exists() {
        return Outcome::failed(
            1,
            format!(
                "there is no store in {} to back up",
                config.data_dir.display()
            ),
        );
    }
    match Store::open(&config.data_dir, &crate::app::store_options(config)) {
        Ok(store) => {
            let outcome = crate::admin::execute(command, &store, None);
            if let Err(e) = store.close() {
                return Outcome::failed(1, format!("closing the store: {e}"));
            }
            outcome
        }
        Err(OpenError::Locked(dir)) => Outcome::failed(
            1,
            format!(
                "the store in {} is locked by a running fleetgroups, but its admin socket does not answer ({socket_error}); check admin.socket, or wait for the server to finish starting",
                dir.display()
            ),
        ),
        Err(e) => Outcome::failed(1, e),
    }
}

fn restore(config: &Config, file: &std::path::Path) -> ExitCode {
    // What restore keeps but warns about (names the current rules refuse) is logged.
    crate::log::init(&config.log);
    let restored =
        crate::backup::restore(&config.data_dir, &crate::app::store_options(config), file);
    // The log writer thread dies with the process: let it write the warnings first.
    crate::log::flush();
    match restored {
        Ok(counts) => {
            say(&format!(
                "restored {counts} into {}; start the server on it\n",
                config.data_dir.display()
            ));
            ExitCode::SUCCESS
        }
        Err(e) => {
            say(&format!("fleetgroups: restore failed: {e}\n"));
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("fleetgroups").chain(args.iter().copied()))
    }

    fn user(args: &[&str]) -> UserCommand {
        match parse(args).map(|c| c.command) {
            Ok(Some(Command::User(cmd))) => cmd,
            other => panic!("{args:?}: {other:?}"),
        }
    }

    #[test]
    fn definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn set_daily_limit_takes_a_number_or_none() {
        let limit = |args: &[&str]| match user(args) {
            UserCommand::Set { daily_limit, .. } => daily_limit,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            limit(&["user", "set", "bob", "--daily-limit", "5"]),
            Some(LimitSetting(Some(5)))
        );
        assert_eq!(
            limit(&["user", "set", "bob", "--daily-limit", "none"]),
            Some(LimitSetting(None))
        );
        assert_eq!(limit(&["user", "set", "bob"]), None);
        for bad in ["0", "-1", "lots", ""] {
            assert!(
                parse(&["user", "set", "bob", "--daily-limit", bad]).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn add_checks_names_and_limits_while_parsing() {
        match user(&[
            "user",
            "add",
            "ci.bot@x",
            "--account",
            "acme",
            "--role",
            "read",
        ]) {
            UserCommand::Add {
                name,
                account,
                role,
                daily_limit,
            } => assert_eq!(
                (name.as_str(), account.as_str(), role, daily_limit),
                ("ci.bot@x", "acme", Role::Read, None)
            ),
            other => panic!("{other:?}"),
        }
        for bad in [
            &["user", "add", "a b"][..],
            &["user", "add", ""],
            &["user", "add", "ok", "--account", "a/b"],
            &["user", "add", "ok", "--daily-limit", "0"],
            &["user", "add", "ok", "--role", "admin"],
        ] {
            let e = parse(bad).map(|_| ()).unwrap_err();
            assert!(e.use_stderr(), "{bad:?}");
        }
    }

    #[test]
    fn global_flags_go_before_or_after_the_command() {
        for args in [
            &["--data-dir", "d", "user", "list"][..],
            &["user", "list", "--data-dir", "d"],
            &["user", "--data-dir", "d", "list"],
        ] {
            let cli = parse(args).unwrap();
            assert_eq!(cli.data_dir, Some(PathBuf::from("d")), "{args:?}");
        }
        assert!(
            parse(&[]).unwrap().command.is_none(),
            "no command means serve"
        );
    }
}
