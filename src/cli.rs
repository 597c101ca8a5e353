//! The command line (clap): `serve` (the default), `user …`, `backup`, `restore`,
//! `check-config` and `healthcheck`. Exit codes: 0 done, 1 failed, 2 bad usage or
//! configuration. Secrets printed for the operator (a new API key) go alone on stdout; everything else goes to
//! stderr. `user …` and `backup` go through the admin socket when a server answers on
//! it and open the store themselves otherwise (ops/admin.rs runs both the same way).
//!
//! Safe to use as root: commands that write into the data directory (`user …`,
//! `backup`, `restore`) refuse to run as anyone but its owner (see [`owner_check`]),
//! and with no `--config` the CLI finds the installed service's configuration in
//! `/etc/fleetgroups/config.toml`. `--output json` gives scripts stable field names.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::config::{Config, Overrides};
use crate::ops::admin::{ClientError, Command as AdminCommand, LimitChange, Outcome, Output};
use crate::store::users::Role;
use crate::store::{OpenError, Store};

#[derive(Debug, Parser)]
#[command(
    name = "fleetgroups",
    version = crate::build_info::LONG,
    about = "Self-hosted server for the Plaspy Groups API"
)]
pub struct Cli {
    /// Configuration file (env FLEETGROUPS_CONFIG; default: ./config.toml when present,
    /// else /etc/fleetgroups/config.toml when present).
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
    /// Write a consistent snapshot of everything (JSON Lines, mode 0600) to FILE, or
    /// to a new timestamped file in --dir.
    #[command(group(clap::ArgGroup::new("target").required(true).args(["file", "dir"])))]
    Backup {
        /// The file to write; gzip-compressed when its name ends in .gz.
        #[arg(value_name = "FILE")]
        file: Option<PathBuf>,
        /// Write fleetgroups-YYYYMMDDTHHMMSSZ.jsonl.gz (UTC, gzip) into DIR, created
        /// 0700 when missing, and print its path.
        #[arg(long, value_name = "DIR", conflicts_with = "file")]
        dir: Option<PathBuf>,
        /// With --dir: afterwards remove the oldest of those backups in DIR beyond the
        /// N newest (other files are never touched). Without it, all are kept.
        // `conflicts_with` rather than `requires = "dir"`, which clap does not enforce for
        // an argument of a group that is satisfied; with the group it means the same.
        #[arg(long, value_name = "N", conflicts_with = "file", value_parser = clap::value_parser!(u64).range(1..))]
        keep: Option<u64>,
    },
    /// Load a backup (plain or gzip) into an empty data directory.
    Restore {
        /// The backup to load: a file written by `fleetgroups backup`, plain JSON Lines
        /// or gzip (told apart by its first bytes, not its name).
        #[arg(value_name = "FILE")]
        file: PathBuf,
        /// Only verify FILE end to end, as restore would, writing nothing; exit 0 when
        /// it is valid, 1 when not.
        #[arg(long)]
        check: bool,
    },
    /// Validate the configuration and print the effective values (secrets redacted).
    CheckConfig(OutputArg),
    /// Verify a stopped store end to end (every record, the indexes, counts, sequences
    /// and the change feed) and print a report; exit 0 when clean, 1 when damaged.
    Check,
    /// Exit 0 when /readyz on the configured listen address answers 200 within 3 s,
    /// else 1 (for container and monitor probes; no curl needed).
    Healthcheck,
}

/// `--output`, on the commands whose result scripts read.
#[derive(Debug, Args, Default)]
struct OutputArg {
    /// `json`: one JSON document on stdout with stable field names, for scripts.
    #[arg(long, value_enum, value_name = "FORMAT", default_value_t = OutputFormat::Text)]
    output: OutputFormat,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
enum OutputFormat {
    /// For people (the default).
    #[default]
    Text,
    /// For scripts.
    Json,
}

impl From<OutputArg> for Output {
    fn from(a: OutputArg) -> Output {
        match a.output {
            OutputFormat::Text => Output::Text,
            OutputFormat::Json => Output::Json,
        }
    }
}

/// `--role`: a clap value enum, so `--help` lists the values. The store's `Role` is
/// not one itself because the store knows nothing of the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum RoleArg {
    /// May read groups, devices and the change feed.
    Read,
    /// May also create, change and delete groups.
    Write,
}

impl From<RoleArg> for Role {
    fn from(r: RoleArg) -> Role {
        match r {
            RoleArg::Read => Role::Read,
            RoleArg::Write => Role::Write,
        }
    }
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
        /// What the user may do.
        #[arg(long, value_enum, default_value_t = RoleArg::Write)]
        role: RoleArg,
        /// Requests per UTC day (at least 1); omit for the configured default.
        #[arg(long, value_name = "N", value_parser = parse_daily_limit)]
        daily_limit: Option<u64>,
        #[command(flatten)]
        output: OutputArg,
    },
    /// List users with their counters.
    List(OutputArg),
    /// Give a user a new API key; the old key and its tokens stop working at once.
    RotateKey {
        /// The user whose key to replace.
        name: String,
        #[command(flatten)]
        output: OutputArg,
    },
    /// Change a user's role, daily limit or disabled flag.
    Set {
        /// The user to change.
        name: String,
        /// What the user may do.
        #[arg(long, value_enum)]
        role: Option<RoleArg>,
        /// A number (at least 1), or `none` to use the configured default.
        #[arg(long, value_name = "N|none", value_parser = parse_limit)]
        daily_limit: Option<LimitSetting>,
        /// `true` refuses the user's logins and revokes its tokens; `false` lets it in
        /// again.
        #[arg(long, value_name = "true|false")]
        disabled: Option<bool>,
    },
    /// Remove a user and its tokens (its account's groups stay).
    Remove {
        /// The user to remove.
        name: String,
    },
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
    let loaded = Config::load(&overrides);
    if let Some(Command::CheckConfig(output)) = &cli.command {
        return check_config(&overrides, loaded, output.output);
    }
    let config = match loaded {
        Ok(c) => c,
        Err(e) => {
            say(&format!("fleetgroups: {e}\n"));
            return config_error_code(cli.command.as_ref());
        }
    };
    if let Err(why) = owner_check_for(cli.command.as_ref(), &config) {
        say(&why);
        return ExitCode::FAILURE;
    }
    match cli.command {
        None | Some(Command::Serve(_)) => serve_command(config, overrides),
        // Answered above, before a configuration error could stop it.
        Some(Command::CheckConfig(_)) => ExitCode::from(2),
        Some(Command::User(cmd)) => run_admin(&config, cmd.into()),
        Some(Command::Backup { file, dir, keep }) => match backup_command(file, dir, keep) {
            Ok(command) => run_admin(&config, command),
            Err(code) => code,
        },
        Some(Command::Check) => check_store(&config),
        Some(Command::Restore { file, check: true }) => check_backup(&config, &file),
        Some(Command::Restore { file, check: false }) => restore(&config, &file),
        Some(Command::Healthcheck) => healthcheck(&config),
    }
}

/// `healthcheck`: 0 with the probe's note, 1 with why the server is unhealthy.
fn healthcheck(config: &Config) -> ExitCode {
    match crate::ops::healthcheck::probe(config) {
        Ok(note) => {
            say(&format!("{note}\n"));
            ExitCode::SUCCESS
        }
        Err(e) => {
            say(&format!("fleetgroups: unhealthy: {}\n", e.0));
            ExitCode::FAILURE
        }
    }
}

/// The exit code of a configuration error: 2, but 1 for `healthcheck` (a probe reports
/// every failure as 1: Docker reserves exit code 2).
fn config_error_code(command: Option<&Command>) -> ExitCode {
    if matches!(command, Some(Command::Healthcheck)) {
        ExitCode::FAILURE
    } else {
        ExitCode::from(2)
    }
}

/// The owner check, for the commands that may create files in the data directory.
fn owner_check_for(command: Option<&Command>, config: &Config) -> Result<(), String> {
    // Commands that may create files in the data directory. Not `serve`: a container
    // commonly runs the server as root on a volume its host user owns, and there the
    // files are root's from the first start on. Not `restore --check`: it writes nothing.
    let writes_data = matches!(
        command,
        Some(
            Command::User(_)
                | Command::Backup { .. }
                | Command::Restore { check: false, .. }
                // sled's open may write its own files even when nothing else is written.
                | Command::Check
        )
    );
    if writes_data {
        owner_check(&config.data_dir)?;
    }
    Ok(())
}

/// The admin command of `backup FILE` or `backup --dir DIR`, its path made absolute: a
/// running server writes the file, and its working directory is not ours.
fn backup_command(
    file: Option<PathBuf>,
    dir: Option<PathBuf>,
    keep: Option<u64>,
) -> Result<AdminCommand, ExitCode> {
    let to_dir = dir.is_some();
    // clap's argument group requires one of the two.
    let Some(target) = file.or(dir) else {
        return Err(ExitCode::from(2));
    };
    match std::path::absolute(&target) {
        Ok(path) if to_dir => Ok(AdminCommand::BackupDir { dir: path, keep }),
        Ok(path) => Ok(AdminCommand::Backup { file: path }),
        Err(e) => {
            say(&format!("fleetgroups: {}: {e}\n", target.display()));
            Err(ExitCode::FAILURE)
        }
    }
}

/// `config` once the files it names are checked: the TLS files and replication's
/// password and CA files are part of the configuration, which a start would refuse.
fn files_checked(config: Config) -> Result<Config, String> {
    crate::server::tls::acceptor(&config.tls).map_err(|e| e.to_string())?;
    if config.replication.enabled() {
        crate::replication::Settings::from_config(&config.replication)
            .map_err(|e| format!("configuration error: {e}"))?;
    }
    Ok(config)
}

/// `check-config`: the effective configuration and the file it came from, or what is
/// wrong with it (exit 2). With `--output json`, one object on stdout either way:
/// `{"valid":true,"configFile":…|null,"config":{…},"warnings":[…]}` or
/// `{"valid":false,"configFile":…|null,"error":"…"}` (the error also goes to stderr).
fn check_config(
    overrides: &Overrides,
    loaded: Result<Config, crate::config::ConfigError>,
    output: OutputFormat,
) -> ExitCode {
    let file = Config::file_from_env(overrides);
    let file_json = file
        .as_ref()
        .map(|f| serde_json::Value::from(f.to_string_lossy()));
    let config = match loaded.map_err(|e| e.to_string()).and_then(files_checked) {
        Ok(c) => c,
        Err(e) => {
            if output == OutputFormat::Json {
                let doc = serde_json::json!({"valid": false, "configFile": file_json, "error": e});
                let _ = print(&format!("{doc}\n"));
            }
            say(&format!("fleetgroups: {e}\n"));
            return ExitCode::from(2);
        }
    };
    let notes: Vec<String> = config
        .ignored_env_note()
        .into_iter()
        .chain(crate::pg_url::sslmode_warning(
            &config.replication.postgres_url,
        ))
        .collect();
    let printed = match output {
        OutputFormat::Text => print(&config.to_redacted_toml()),
        OutputFormat::Json => {
            let doc = serde_json::json!({
                "valid": true,
                "configFile": file_json,
                "config": config.redacted(),
                "warnings": notes,
            });
            print(&format!("{doc}\n"))
        }
    };
    if let Err(e) = printed {
        say(&format!("fleetgroups: cannot write to stdout: {e}\n"));
        return ExitCode::FAILURE;
    }
    for note in &notes {
        say(&format!("fleetgroups: warning: {note}\n"));
    }
    match &file {
        Some(f) => say(&format!("configuration file: {}\n", f.display())),
        None => say("no configuration file: built-in defaults and FLEETGROUPS_* variables\n"),
    }
    say("configuration is valid\n");
    ExitCode::SUCCESS
}

/// Refuses (with how to do it right) to run a command that writes into the data
/// directory as anyone but its owner. Root can write anywhere, but the files it
/// creates there (sled's snapshots, a lock, a store) are root's, 0600, and the
/// service's user can then no longer open its own store: the next start fails.
fn owner_check(data_dir: &std::path::Path) -> Result<(), String> {
    match crate::perms::foreign_owner(data_dir) {
        None => Ok(()),
        Some(f) => Err(format!(
            "fleetgroups: {} belongs to {}, but this command runs as {}: files it created there would belong to the wrong user and the server could no longer open its store. Nothing was done. Run it as the owner:\n  {}\n",
            data_dir.display(),
            f.owner,
            f.me,
            f.run_as_owner,
        )),
    }
}

/// Who may answer on the admin socket (`admin::TrustedPeer`): the owner of the data
/// directory's store (else of the directory itself: what `owner_check` holds the CLI
/// to), or the CLI's own uid when there is no data directory yet.
fn trusted_peer(data_dir: &std::path::Path) -> crate::ops::admin::TrustedPeer {
    use std::os::unix::fs::MetadataExt;
    match std::fs::metadata(data_dir.join("store")).or_else(|_| std::fs::metadata(data_dir)) {
        Ok(meta) => crate::ops::admin::TrustedPeer {
            owner: meta.uid(),
            what: format!(
                "the owner of {}, {}",
                data_dir.display(),
                crate::perms::who(meta.uid())
            ),
        },
        Err(_) => {
            let me = rustix::process::geteuid().as_raw();
            crate::ops::admin::TrustedPeer {
                owner: me,
                what: format!("this command's own user, {}", crate::perms::who(me)),
            }
        }
    }
}

/// `serve`, the default command: the server until it stops.
fn serve_command(config: Config, overrides: Overrides) -> ExitCode {
    let code = crate::server::run(config, overrides);
    // The log writer thread dies with the process: let it write what is queued.
    crate::log::flush();
    code
}

/// `check`: the store must be stopped (the check reads every record, and a running
/// server changes them meanwhile). Opening it already refuses a damaged store with the
/// reason; then every record is read. A clean store is closed as the server closes it,
/// sealed (`store/disk/seal.rs`), so that damage made after the check is still refused by
/// the next start; a damaged one is dropped unsealed, and the next start checks it
/// again.
fn check_store(config: &Config) -> ExitCode {
    let dir = config.data_dir.display().to_string();
    if !config.data_dir.join("store").exists() {
        say(&format!(
            "fleetgroups: there is no store in {dir} to check\n"
        ));
        return ExitCode::FAILURE;
    }
    let store = match Store::open(&config.data_dir, &crate::app::store_options(config)) {
        Ok(s) => s,
        Err(OpenError::Locked(_)) => {
            say(&format!(
                "fleetgroups: the store in {dir} is in use by a running server; stop it first (check reads a stopped store)\n"
            ));
            return ExitCode::FAILURE;
        }
        Err(e) => {
            say(&format!("fleetgroups: check: DAMAGED: {e}\n"));
            return ExitCode::FAILURE;
        }
    };
    let report = store.check();
    if report.clean() {
        if let Err(e) = store.close() {
            say(&format!("fleetgroups: closing the store: {}\n", e.chain()));
            return ExitCode::FAILURE;
        }
    }
    drop(store);
    let mut text = format!(
        "checked the store in {dir}: {} groups, {} name index entries, {} device index entries, {} change-feed entries, {} users\n",
        report.groups, report.names, report.device_entries, report.changes, report.users
    );
    for p in &report.problems {
        text.push_str(&format!("problem: {p}\n"));
    }
    if report.clean() {
        text.push_str("clean\n");
    } else {
        text.push_str(&format!(
            "DAMAGED: {} problems; restore the last backup into an empty directory and start on that\n",
            report.problem_count
        ));
    }
    if print(&text).is_err() {
        return ExitCode::FAILURE;
    }
    if report.clean() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
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

/// `user …` is the admin command of the same name: the command line's types (a clap
/// value enum for the role, `none` for a limit) map onto the protocol's.
impl From<UserCommand> for AdminCommand {
    fn from(cmd: UserCommand) -> AdminCommand {
        match cmd {
            UserCommand::Add {
                name,
                account,
                role,
                daily_limit,
                output,
            } => AdminCommand::UserAdd {
                name,
                account,
                role: role.into(),
                daily_limit,
                output: output.into(),
            },
            UserCommand::List(output) => AdminCommand::UserList {
                output: output.into(),
            },
            UserCommand::RotateKey { name, output } => AdminCommand::UserRotateKey {
                name,
                output: output.into(),
            },
            UserCommand::Set {
                name,
                role,
                daily_limit,
                disabled,
            } => AdminCommand::UserSet {
                name,
                role: role.map(Role::from),
                daily_limit: daily_limit.map(|l| LimitChange { limit: l.0 }),
                disabled,
            },
            UserCommand::Remove { name } => AdminCommand::UserRemove { name },
        }
    }
}

/// Runs a command through the running server's admin socket, or on the store directly
/// when no server answers there.
fn run_admin(config: &Config, command: AdminCommand) -> ExitCode {
    let socket = config.admin_socket();
    let trusted = trusted_peer(&config.data_dir);
    let outcome = match crate::ops::admin::request(&socket, &command, &trusted) {
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
    if matches!(
        command,
        AdminCommand::Backup { .. } | AdminCommand::BackupDir { .. }
    ) && !config.data_dir.join("store").exists()
    {
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
            let outcome = crate::ops::admin::execute(command, &store, None);
            if let Err(e) = store.close() {
                return Outcome::failed(1, format!("closing the store: {}", e.chain()));
            }
            outcome
        }
        Err(OpenError::Locked(dir)) => Outcome::failed(
            1,
            format!(
                "the store in {} is locked by a running fleetgroups, but its admin socket does not answer ({socket_error}): the server is starting or stopping, or admin.socket names another path. Run the command again in a moment, or check admin.socket",
                dir.display()
            ),
        ),
        Err(e) => Outcome::failed(1, e),
    }
}

fn restore(config: &Config, file: &std::path::Path) -> ExitCode {
    // What restore keeps but warns about (names the current rules refuse) is logged.
    crate::log::init(&config.log.level, config.log.format);
    let restored =
        crate::ops::backup::restore(&config.data_dir, &crate::app::store_options(config), file);
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

/// `restore --check`: reads and checks the whole file, writes nothing, prints a summary.
fn check_backup(config: &Config, file: &std::path::Path) -> ExitCode {
    // Warnings restore would log (names the current rules refuse) show here too.
    crate::log::init(&config.log.level, config.log.format);
    let checked = crate::ops::backup::check(file, config.limits.max_devices_per_group);
    crate::log::flush();
    match checked {
        Ok(c) => {
            let encoding = match c.encoding {
                crate::ops::backup::Encoding::Gzip => "gzip",
                crate::ops::backup::Encoding::Plain => "plain",
            };
            let summary = format!(
                "{}: a valid fleetgroups backup ({encoding}, created {}, store format {})\n{}; {} records\n",
                file.display(),
                c.created,
                c.store_format,
                c.counts,
                c.counts.records
            );
            if let Err(e) = print(&summary) {
                say(&format!("fleetgroups: cannot write to stdout: {e}\n"));
                return ExitCode::FAILURE;
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            say(&format!("fleetgroups: not a valid backup: {e}\n"));
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
                output,
            } => assert_eq!(
                (
                    name.as_str(),
                    account.as_str(),
                    role,
                    daily_limit,
                    output.output
                ),
                ("ci.bot@x", "acme", RoleArg::Read, None, OutputFormat::Text)
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
