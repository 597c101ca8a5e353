//! Configuration: every key declared once with its type and default, loaded with the
//! precedence flag > `FLEETGROUPS_<SECTION>_<KEY>` environment variable > TOML file >
//! built-in default, and validated before anything starts (docs/configuration.md). There is no global: a `Config` value is passed to the server, so
//! two servers with different configurations can run in one process.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::cidr::Cidr;
// The log's own types: `log.rs` parses and applies them and knows nothing of this file.
pub use crate::log::{LogFormat, LogLevel};

/// The whole configuration. Field names are the TOML keys.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address and port the HTTP listener binds.
    pub listen: String,
    /// Directory holding the store, the initial key file and the admin socket.
    pub data_dir: PathBuf,
    /// Seconds in-flight requests get to finish after SIGTERM/SIGINT.
    pub shutdown_grace_secs: u64,
    pub auth: AuthConfig,
    pub limits: LimitsConfig,
    pub storage: StorageConfig,
    pub retention: RetentionConfig,
    pub tls: TlsConfig,
    pub log: LogConfig,
    pub metrics: MetricsConfig,
    pub admin: AdminConfig,
    pub replication: ReplicationConfig,
    /// Test-only fault injection; never in the file, never printed.
    #[serde(skip)]
    pub fault: FaultInjection,
    /// Kubernetes service-link variables found and ignored (see [`service_link`]);
    /// `serve` names them in one warning once logging is up.
    #[serde(skip)]
    pub ignored_env: Vec<String>,
}

/// Name of a `FLEETGROUPS_*` variable that is not a configuration key (the other is
/// `build_info::REVISION_ENV`, a build variable that is skipped): a
/// test-only switch that makes the store's flusher report failure after N successful
/// flushes, so the storage-failure behaviour (503, rollback, `/readyz`) can be tested
/// on a machine where the disk cannot be made to fail. Logged loudly when set.
pub const FAULT_FAIL_FLUSH_AFTER: &str = "FLEETGROUPS_FAULT_FAIL_FLUSH_AFTER";

/// The configuration file used when none is named (`--config`, `FLEETGROUPS_CONFIG`)
/// and there is no `./config.toml`: where the Debian package's conffile and the unit's
/// `ConfigurationDirectory=` put it, so `fleetgroups user list` typed on a gateway
/// finds the service's data directory and socket without `--config`.
pub const SYSTEM_CONFIG: &str = "/etc/fleetgroups/config.toml";

/// Name of the variable that replaces [`SYSTEM_CONFIG`]'s path (empty: no such
/// fallback). Not a configuration key: it exists so tests (and installations under
/// another prefix) do not depend on what is in `/etc` of the machine they run on.
pub const SYSTEM_CONFIG_ENV: &str = "FLEETGROUPS_SYSTEM_CONFIG";

/// Faults to inject (tests only).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FaultInjection {
    /// See [`FAULT_FAIL_FLUSH_AFTER`].
    pub fail_flush_after: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Bearer token lifetime in seconds.
    pub token_ttl_secs: u64,
    /// Live tokens kept per user; the oldest is evicted past this.
    pub tokens_per_user: usize,
    /// Failed logins per userName or client address within the window before 429.
    pub max_failed_logins: u32,
    /// Window for counting failed logins, in seconds.
    pub failed_login_window_secs: u64,
    /// Argon2 verifications allowed to run at once (each uses ~19 MiB and one core).
    pub hash_concurrency: usize,
    /// Most userNames, and separately most client addresses, the failed-login table
    /// tracks (`auth/login_limiter.rs` says what happens when it is full).
    pub failed_login_max_entries: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Largest accepted request body in bytes.
    pub max_body_bytes: u64,
    /// Most distinct device IDs in one group.
    pub max_devices_per_group: usize,
    /// Most groups in one account.
    pub max_groups_per_account: u64,
    /// Most simultaneous client connections.
    pub max_connections: usize,
    /// Seconds a client has to send a complete request head, counted from the
    /// connection or the previous response (so also the keep-alive idle timeout).
    pub header_timeout_secs: u64,
    /// Seconds a client has to send a request's body.
    pub body_timeout_secs: u64,
    /// Seconds a write may wait for a client that takes none of the answer before the
    /// connection is closed (a client that reads, however slowly, is not cut).
    pub write_timeout_secs: u64,
    /// Largest JSON a page of the change feed, the group list or the reverse lookup
    /// holds (fewer entries, `next` continues; always at least one entry).
    pub max_page_bytes: u64,
    /// Requests per minute per user; 0 turns the limit off.
    pub requests_per_minute: u64,
    /// Default daily request limit for users without their own; 0 means none.
    pub daily_limit: u64,
    /// `Idempotency-Key` records kept per user (24 h each); past it the oldest goes, so
    /// storage stays bounded between hourly purges.
    pub idempotency_keys_per_user: u64,
    /// Bytes of remembered first answers (`Idempotency-Key` records) per user; past it
    /// the oldest records go. One answer larger than this is still kept, alone.
    pub idempotency_bytes_per_user: u64,
    /// Most operations in one JSON Patch.
    pub max_patch_operations: u64,
    /// Largest a group document may grow (as JSON) while a JSON Patch or merge patch
    /// applies, checked before each operation.
    pub max_patch_document_bytes: u64,
    /// Largest body of `POST /api/Auth/Token` (a valid login is under 200 bytes).
    pub max_token_body_bytes: u64,
    /// Bytes of request bodies all clients together may have in the server at once
    /// (received and being handled); past it a body waits briefly, then 503.
    pub body_budget_bytes: u64,
    /// Bytes of answers all clients together may have waiting to be read at once;
    /// past it a read's answer is refused with 503 (a write's answer is always sent).
    pub answer_budget_bytes: u64,
    /// Least rate, in bytes a second, at which a client must take an answer while it
    /// makes the server wait; a slower one is cut (measured over 10 s of waiting).
    pub min_read_bytes_per_sec: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    /// `fsync`: a 2xx means the change is in the write-ahead log on disk. `relaxed`:
    /// the answer does not wait; the log thread writes it a moment later.
    pub durability: Durability,
    /// Memory for sled's page cache, in MiB.
    pub cache_mb: u64,
    /// Size of one write-ahead log segment file, in MiB (preallocated).
    pub log_segment_mb: u64,
    /// MiB of log after which a checkpoint flushes the store and recycles the log:
    /// the bound on what a start after a crash replays.
    pub checkpoint_mb: u64,
    /// Seconds after which a checkpoint runs when anything was written since.
    pub checkpoint_secs: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    Fsync,
    Relaxed,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetentionConfig {
    /// Days change-feed entries are kept, counted in the server's running time on the
    /// monotonic clock (`store/retention.rs`).
    pub changes_days: u64,
    /// MiB the change feed may take on disk (keys and values of its entries); past it
    /// the oldest entries of the whole store go first, whatever their age.
    pub changes_max_mb: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain; with `key`, the server speaks HTTPS only. Empty: off.
    pub cert: String,
    /// PEM private key.
    pub key: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// A level (`error`, `warn`, `info`, `debug`, `trace`, `off`) or a comma-separated
    /// list of directives in `EnvFilter` syntax (`info,fleetgroups::access=off`); checked
    /// as it is read (`log::LogLevel`).
    pub level: LogLevel,
    /// `text` or `json`.
    pub format: LogFormat,
    /// The per-request line (target `fleetgroups::access`): `all`, `errors` (status
    /// ≥ 400 only) or `off`.
    pub access: AccessLog,
}

/// Which requests get a line in the log (`log.access`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AccessLog {
    All,
    Errors,
    Off,
}

impl AccessLog {
    /// Whether a request answered with `status` gets its line.
    pub fn logs(self, status: u16) -> bool {
        match self {
            AccessLog::All => true,
            AccessLog::Errors => status >= 400,
            AccessLog::Off => false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// Serve `/metrics`.
    pub enabled: bool,
    /// Client networks that may read `/metrics` (CIDR; a bare address is one host);
    /// others get 403. Default: loopback and the private ranges.
    pub allowed_networks: Vec<Cidr>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// Admin socket path; empty means `<data_dir>/admin.sock`.
    pub socket: String,
}

/// `[replication]`: push the change feed into a central PostgreSQL (docs/operations/many-gateways.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReplicationConfig {
    /// libpq-style URL (`postgresql://user@host:5432/db?sslmode=verify-full`); empty:
    /// replication off. May hold a password; it is never printed.
    pub postgres_url: String,
    /// File holding the password (systemd `LoadCredential=`); overrides one in the URL.
    pub password_file: String,
    /// PEM CA certificates for `sslmode=verify-ca` and `verify-full` (rustls).
    pub ca_file: String,
    /// This gateway's name centrally, `[A-Za-z0-9._-]{1,64}`; empty: the host name.
    pub gateway_id: String,
    /// Change entries per PostgreSQL transaction (1–10000).
    pub batch_size: u64,
    /// Close the central connection after this many seconds with nothing to ship
    /// (0: keep it open); a fleet larger than the centre's slots takes turns.
    pub idle_disconnect_secs: u64,
    /// How often a gateway reports that it is alive, jittered (1–86400).
    pub heartbeat_secs: u64,
    /// Central `changes` older than this many days are pruned (0: kept for ever).
    pub central_changes_days: u64,
    /// Seconds between pulls of office groups from the centre at most (jittered;
    /// 1–86400): a gateway also pulls whenever it connects.
    pub pull_secs: u64,
}

impl Default for ReplicationConfig {
    fn default() -> Self {
        ReplicationConfig {
            postgres_url: String::new(),
            password_file: String::new(),
            ca_file: String::new(),
            gateway_id: String::new(),
            batch_size: 500,
            idle_disconnect_secs: 10,
            heartbeat_secs: 60,
            central_changes_days: 365,
            pull_secs: 60,
        }
    }
}

impl ReplicationConfig {
    /// Whether replication is configured.
    pub fn enabled(&self) -> bool {
        !self.postgres_url.is_empty()
    }

    /// The gateway ID in effect: the setting, else the host name.
    pub fn effective_gateway_id(&self) -> String {
        if self.gateway_id.is_empty() {
            rustix::system::uname()
                .nodename()
                .to_string_lossy()
                .into_owned()
        } else {
            self.gateway_id.clone()
        }
    }
}

/// Whether `id` is a valid `replication.gateway_id`.
pub fn valid_gateway_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "127.0.0.1:8080".into(),
            data_dir: PathBuf::from("data"),
            shutdown_grace_secs: 10,
            auth: AuthConfig::default(),
            limits: LimitsConfig::default(),
            storage: StorageConfig::default(),
            retention: RetentionConfig::default(),
            tls: TlsConfig::default(),
            log: LogConfig::default(),
            metrics: MetricsConfig::default(),
            admin: AdminConfig::default(),
            replication: ReplicationConfig::default(),
            fault: FaultInjection::default(),
            ignored_env: Vec::new(),
        }
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            token_ttl_secs: 86_400,
            tokens_per_user: 20,
            max_failed_logins: 10,
            failed_login_window_secs: 60,
            hash_concurrency: 1,
            failed_login_max_entries: 10_000,
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_body_bytes: 1_048_576,
            max_devices_per_group: 10_000,
            max_groups_per_account: 1_000_000,
            max_connections: 1024,
            header_timeout_secs: 10,
            body_timeout_secs: 30,
            write_timeout_secs: 30,
            max_page_bytes: 4 * 1024 * 1024,
            requests_per_minute: 0,
            daily_limit: 0,
            idempotency_keys_per_user: 10_000,
            idempotency_bytes_per_user: 4 * 1024 * 1024,
            max_patch_operations: 1000,
            max_patch_document_bytes: 4 * 1024 * 1024,
            max_token_body_bytes: 4096,
            body_budget_bytes: 64 * 1024 * 1024,
            answer_budget_bytes: 64 * 1024 * 1024,
            min_read_bytes_per_sec: 4096,
        }
    }
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            durability: Durability::Fsync,
            cache_mb: 8,
            log_segment_mb: 16,
            checkpoint_mb: 64,
            checkpoint_secs: 30,
        }
    }
}

impl Default for RetentionConfig {
    fn default() -> Self {
        RetentionConfig {
            changes_days: 30,
            changes_max_mb: 256,
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: LogLevel::default(),
            format: LogFormat::Text,
            access: AccessLog::All,
        }
    }
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            enabled: true,
            // Loopback, RFC 1918, IPv6 unique-local and link-local: a scraper on the
            // gateway or its LAN, not the internet a gateway may also face.
            allowed_networks: [
                "127.0.0.0/8",
                "::1/128",
                "10.0.0.0/8",
                "172.16.0.0/12",
                "192.168.0.0/16",
                "fc00::/7",
                "fe80::/10",
            ]
            .iter()
            .filter_map(|n| n.parse().ok())
            .collect(),
        }
    }
}

/// Values given on the command line; they win over everything else.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub config_file: Option<PathBuf>,
    pub data_dir: Option<PathBuf>,
    pub listen: Option<String>,
}

/// A configuration problem; the message names the key. Exit code 2.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "configuration error: {}", self.0)
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Loads the configuration from the process environment and `overrides`.
    pub fn load(overrides: &Overrides) -> Result<Config, ConfigError> {
        Self::load_from(overrides, &fleetgroups_env())
    }

    /// Loads from an explicit environment map (tests use this; no global state).
    pub fn load_from(
        overrides: &Overrides,
        env: &BTreeMap<String, String>,
    ) -> Result<Config, ConfigError> {
        let mut table = match Self::file(overrides, env) {
            Some(path) => read_table(&path)?,
            None => toml::Table::new(),
        };
        let ignored_env = apply_env(&mut table, env)?;
        check_each_key(&table)?;
        let mut config: Config = toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError(describe_toml_error(&e)))?;
        config.ignored_env = ignored_env;
        if let Some(dir) = &overrides.data_dir {
            config.data_dir = dir.clone();
        }
        if let Some(listen) = &overrides.listen {
            config.listen = listen.clone();
        }
        if let Some(raw) = env.get(FAULT_FAIL_FLUSH_AFTER) {
            config.fault.fail_flush_after = Some(raw.trim().parse().map_err(|_| {
                ConfigError(format!(
                    "{FAULT_FAIL_FLUSH_AFTER}: expected an integer, got {raw:?}"
                ))
            })?);
        }
        config.validate()?;
        Ok(config)
    }

    /// The configuration file to read: `--config`, else `FLEETGROUPS_CONFIG` (both must
    /// exist), else `./config.toml`, else [`SYSTEM_CONFIG`] (or what
    /// [`SYSTEM_CONFIG_ENV`] names), when they exist; `None` means the built-in defaults.
    pub fn file(overrides: &Overrides, env: &BTreeMap<String, String>) -> Option<PathBuf> {
        if let Some(named) = overrides
            .config_file
            .clone()
            .or_else(|| env.get("FLEETGROUPS_CONFIG").map(PathBuf::from))
        {
            return Some(named);
        }
        let local = PathBuf::from("config.toml");
        if local.exists() {
            return Some(local);
        }
        let system = env
            .get(SYSTEM_CONFIG_ENV)
            .map_or_else(|| PathBuf::from(SYSTEM_CONFIG), PathBuf::from);
        (!system.as_os_str().is_empty() && system.exists()).then_some(system)
    }

    /// [`Config::file`] for the process environment.
    pub fn file_from_env(overrides: &Overrides) -> Option<PathBuf> {
        Self::file(overrides, &fleetgroups_env())
    }

    /// The numbers with a floor: key, value, floor, in the order they are reported.
    // Long because it is one row per key with a floor: a table reads best whole.
    fn floors(&self) -> Vec<(&'static str, u64, u64)> {
        fn n<T: TryInto<u64>>(v: T) -> u64 {
            v.try_into().unwrap_or(u64::MAX)
        }
        let (auth, limits) = (&self.auth, &self.limits);
        vec![
            ("auth.token_ttl_secs", n(auth.token_ttl_secs), 1),
            ("auth.tokens_per_user", n(auth.tokens_per_user), 1),
            ("auth.max_failed_logins", n(auth.max_failed_logins), 1),
            (
                "auth.failed_login_window_secs",
                n(auth.failed_login_window_secs),
                1,
            ),
            ("auth.hash_concurrency", n(auth.hash_concurrency), 1),
            (
                "auth.failed_login_max_entries",
                n(auth.failed_login_max_entries),
                1,
            ),
            ("limits.max_body_bytes", n(limits.max_body_bytes), 1024),
            (
                "limits.max_devices_per_group",
                n(limits.max_devices_per_group),
                1,
            ),
            (
                "limits.max_groups_per_account",
                n(limits.max_groups_per_account),
                1,
            ),
            (
                "limits.idempotency_keys_per_user",
                n(limits.idempotency_keys_per_user),
                1,
            ),
            (
                "limits.idempotency_bytes_per_user",
                n(limits.idempotency_bytes_per_user),
                1024,
            ),
            (
                "limits.max_patch_operations",
                n(limits.max_patch_operations),
                1,
            ),
            (
                "limits.max_patch_document_bytes",
                n(limits.max_patch_document_bytes),
                1024,
            ),
            (
                "limits.max_token_body_bytes",
                n(limits.max_token_body_bytes),
                256,
            ),
            (
                "limits.body_budget_bytes",
                n(limits.body_budget_bytes),
                1024,
            ),
            (
                "limits.answer_budget_bytes",
                n(limits.answer_budget_bytes),
                1024,
            ),
            ("limits.max_connections", n(limits.max_connections), 1),
            (
                "limits.header_timeout_secs",
                n(limits.header_timeout_secs),
                1,
            ),
            ("limits.body_timeout_secs", n(limits.body_timeout_secs), 1),
            ("limits.write_timeout_secs", n(limits.write_timeout_secs), 1),
            ("limits.max_page_bytes", n(limits.max_page_bytes), 1024),
            ("storage.cache_mb", n(self.storage.cache_mb), 1),
            ("storage.log_segment_mb", n(self.storage.log_segment_mb), 1),
            ("storage.checkpoint_mb", n(self.storage.checkpoint_mb), 1),
            (
                "storage.checkpoint_secs",
                n(self.storage.checkpoint_secs),
                1,
            ),
            ("retention.changes_days", n(self.retention.changes_days), 1),
            (
                "retention.changes_max_mb",
                n(self.retention.changes_max_mb),
                1,
            ),
        ]
    }

    /// Checks values that parse but cannot work.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let limits = &self.limits;
        let bad = |key: &str, why: &str| Err(ConfigError(format!("{key}: {why}")));
        if self.listen.parse::<std::net::SocketAddr>().is_err() {
            return bad(
                "listen",
                "must be an IP address and port, e.g. 127.0.0.1:8080",
            );
        }
        if self.data_dir.as_os_str().is_empty() {
            return bad("data_dir", "must not be empty");
        }
        for (key, value, floor) in self.floors() {
            if value < floor {
                return bad(key, &format!("must be at least {floor}"));
            }
        }
        // A budget smaller than one request's share could never admit that request.
        if limits.body_budget_bytes < limits.max_body_bytes {
            return bad(
                "limits.body_budget_bytes",
                "must be at least limits.max_body_bytes (one largest body must fit)",
            );
        }
        if limits.answer_budget_bytes < limits.max_page_bytes {
            return bad(
                "limits.answer_budget_bytes",
                "must be at least limits.max_page_bytes (one largest page must fit)",
            );
        }
        if self.tls.cert.is_empty() != self.tls.key.is_empty() {
            return bad("tls", "set both cert and key, or neither");
        }
        validate_replication(&self.replication)?;
        if self.metrics.allowed_networks.is_empty() {
            return bad(
                "metrics.allowed_networks",
                "must name at least one network; to let every client read /metrics use [\"0.0.0.0/0\", \"::/0\"], to turn it off metrics.enabled = false",
            );
        }
        Ok(())
    }

    /// The effective configuration as TOML, secrets redacted (`check-config`).
    pub fn to_redacted_toml(&self) -> String {
        toml::to_string(&self.redacted()).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
    }

    /// A copy with secrets replaced by `***` (for showing it).
    pub fn redacted(&self) -> Config {
        let mut shown = self.clone();
        if !shown.tls.key.is_empty() {
            shown.tls.key = "***".into();
        }
        shown.replication.postgres_url = crate::pg_url::redact(&shown.replication.postgres_url);
        shown
    }

    /// One warning naming the ignored service-link variables, if there were any.
    pub fn log_ignored_env(&self) {
        if let Some(text) = self.ignored_env_note() {
            tracing::warn!("{text}");
        }
    }

    /// The text of that warning (`check-config` prints it too).
    pub fn ignored_env_note(&self) -> Option<String> {
        (!self.ignored_env.is_empty()).then(|| {
            format!(
                "ignored {} Kubernetes service-link variable(s), which are not settings: {}",
                self.ignored_env.len(),
                self.ignored_env.join(", ")
            )
        })
    }

    /// The admin socket path.
    pub fn admin_socket(&self) -> PathBuf {
        if self.admin.socket.is_empty() {
            self.data_dir.join("admin.sock")
        } else {
            PathBuf::from(&self.admin.socket)
        }
    }

    /// The daily limit for a user with `own` as its personal setting.
    pub fn effective_daily_limit(&self, own: Option<u64>) -> Option<u64> {
        own.or((self.limits.daily_limit > 0).then_some(self.limits.daily_limit))
    }
}

/// The process's `FLEETGROUPS_*` variables.
fn fleetgroups_env() -> BTreeMap<String, String> {
    std::env::vars()
        .filter(|(k, _)| k.starts_with("FLEETGROUPS_"))
        .collect()
}

fn read_table(path: &Path) -> Result<toml::Table, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError(format!("cannot read {}: {e}", path.display())))?;
    text.parse::<toml::Table>().map_err(|e| {
        let at = e
            .span()
            .map(|span| {
                let (line, column) = line_and_column(&text, span.start);
                format!(" line {line}, column {column}")
            })
            .unwrap_or_default();
        ConfigError(format!(
            "{}:{at}: {}",
            path.display(),
            describe_toml_error(&e)
        ))
    })
}

/// 1-based line and column (in characters, as editors count them) of a byte offset.
fn line_and_column(text: &str, offset: usize) -> (usize, usize) {
    let mut at = offset.min(text.len());
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    let before = &text[..at];
    let line = before.matches('\n').count() + 1;
    let start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[start..].chars().count() + 1)
}

/// toml's errors name the key ("unknown field `x`, expected one of …", "invalid type");
/// keep the first line so the message stays one line.
fn describe_toml_error(e: &toml::de::Error) -> String {
    e.message().trim().lines().next().unwrap_or("").to_string()
}

/// Deserialises every key on its own so that an error (unknown key, wrong type, bad
/// enum value) names the key it belongs to, e.g. `limits.max_body_bytes: invalid type`.
fn check_each_key(table: &toml::Table) -> Result<(), ConfigError> {
    let try_one = |path: String, single: toml::Table| -> Result<(), ConfigError> {
        toml::Value::Table(single)
            .try_into::<Config>()
            .map(|_| ())
            .map_err(|e: toml::de::Error| {
                let (section, key) = path.rsplit_once('.').unwrap_or(("", &path));
                match belongs_elsewhere(section, key) {
                    Some(hint) => ConfigError(format!("{path}: unknown key; {hint}")),
                    None => ConfigError(format!("{path}: {}", describe_toml_error(&e))),
                }
            })
    };
    for (key, value) in table {
        match value {
            toml::Value::Table(section)
                if toml::Value::try_from(Config::default())
                    .ok()
                    .and_then(|d| d.get(key).map(toml::Value::is_table))
                    .unwrap_or(false) =>
            {
                for (sk, sv) in section {
                    let mut inner = toml::Table::new();
                    inner.insert(sk.clone(), sv.clone());
                    let mut single = toml::Table::new();
                    single.insert(key.clone(), toml::Value::Table(inner));
                    try_one(format!("{key}.{sk}"), single)?;
                }
            }
            other => {
                let mut single = toml::Table::new();
                single.insert(key.clone(), other.clone());
                try_one(key.clone(), single)?;
            }
        }
    }
    Ok(())
}

/// Where a key found in the wrong place belongs, said so that the fix is obvious: a
/// top-level key written after a `[section]` header is read by TOML as part of that
/// section (`listen` after `[limits]` is `limits.listen`), which "unknown field"
/// alone does not explain. None when `key` is unknown everywhere.
fn belongs_elsewhere(section: &str, key: &str) -> Option<String> {
    let home = known_keys()
        .into_iter()
        .find(|(s, k, _)| k == key && s != section)?
        .0;
    Some(if home.is_empty() {
        format!("`{key}` is a top-level key: put it above the first [section] of the file (after [{section}], TOML reads it as {section}.{key})")
    } else {
        format!("`{key}` belongs in the [{home}] section")
    })
}

/// The `[replication]` checks of [`Config::validate`].
fn validate_replication(r: &ReplicationConfig) -> Result<(), ConfigError> {
    let bad = |key: &str, why: &str| Err(ConfigError(format!("{key}: {why}")));
    // Key, value, the allowed range, and what its least value means when that is 0.
    let ranges = [
        ("batch_size", r.batch_size, 1, 10_000, ""),
        (
            "idle_disconnect_secs",
            r.idle_disconnect_secs,
            0,
            86_400,
            " (keep the connection open)",
        ),
        ("heartbeat_secs", r.heartbeat_secs, 1, 86_400, ""),
        (
            "central_changes_days",
            r.central_changes_days,
            0,
            36_500,
            " (keep for ever)",
        ),
        ("pull_secs", r.pull_secs, 1, 86_400, ""),
    ];
    for (key, value, least, most, meaning) in ranges {
        if !(least..=most).contains(&value) {
            return bad(
                &format!("replication.{key}"),
                &format!("must be from {least}{meaning} to {most}"),
            );
        }
    }
    if !r.gateway_id.is_empty() && !valid_gateway_id(&r.gateway_id) {
        return bad(
            "replication.gateway_id",
            "must be 1-64 characters of A-Z a-z 0-9 . _ -",
        );
    }
    if r.enabled() {
        if let Err(why) = crate::pg_url::check(&r.postgres_url, &r.ca_file) {
            return Err(ConfigError(why.to_string()));
        }
        let id = r.effective_gateway_id();
        if !valid_gateway_id(&id) {
            return bad(
                "replication.gateway_id",
                &format!("the host name {id:?} is not 1-64 characters of A-Z a-z 0-9 . _ -; set replication.gateway_id"),
            );
        }
    }
    Ok(())
}

/// Every known key as (section or "", key, default value), derived from the defaults so
/// the list cannot drift from the struct (also what the manual pages and
/// docs/configuration.md are generated from, `ops/assets.rs`).
pub fn known_keys() -> Vec<(String, String, toml::Value)> {
    let mut out = Vec::new();
    if let Ok(toml::Value::Table(top)) = toml::Value::try_from(Config::default()) {
        for (k, v) in top {
            match v {
                toml::Value::Table(section) => {
                    for (sk, sv) in section {
                        out.push((k.clone(), sk, sv));
                    }
                }
                other => out.push((String::new(), k, other)),
            }
        }
    }
    out
}

/// The environment variable of a key: `FLEETGROUPS_<SECTION>_<KEY>`, or
/// `FLEETGROUPS_<KEY>` for a top-level one (`section` empty).
pub fn env_name(section: &str, key: &str) -> String {
    if section.is_empty() {
        format!("FLEETGROUPS_{}", key.to_uppercase())
    } else {
        format!(
            "FLEETGROUPS_{}_{}",
            section.to_uppercase(),
            key.to_uppercase()
        )
    }
}

/// Whether `name=value` is a variable Kubernetes injects into every pod of a namespace
/// for a Service named `fleetgroups` ("service links", on unless the pod says
/// `enableServiceLinks: false`):
///
/// ```text
/// FLEETGROUPS_SERVICE_HOST=10.0.0.1            FLEETGROUPS_PORT=tcp://10.0.0.1:8080
/// FLEETGROUPS_SERVICE_PORT=8080                FLEETGROUPS_PORT_8080_TCP=tcp://10.0.0.1:8080
/// FLEETGROUPS_SERVICE_PORT_<NAME>=8080         FLEETGROUPS_PORT_8080_TCP_PROTO=tcp
///                                              FLEETGROUPS_PORT_8080_TCP_PORT=8080
///                                              FLEETGROUPS_PORT_8080_TCP_ADDR=10.0.0.1
/// ```
///
/// The value must have the shape Kubernetes writes too, so a variable that only looks
/// like one (`FLEETGROUPS_PORT=8080`, someone guessing at a setting) is still refused
/// as unknown. No configuration key is named `port` or lives in a section `port` or
/// `service` (a unit test keeps it so); real keys are matched first anyway.
pub fn service_link(name: &str, value: &str) -> bool {
    let is_port = |s: &str| {
        !s.is_empty()
            && s.bytes().all(|b| b.is_ascii_digit())
            && s.parse::<u16>().is_ok_and(|n| n > 0)
    };
    let is_ip = |s: &str| s.parse::<std::net::IpAddr>().is_ok();
    let protocol = |s: &str| matches!(s, "TCP" | "UDP" | "SCTP");
    // `tcp://10.0.0.1:8080`, `tcp://[fd00::1]:8080`.
    let is_url = |s: &str| {
        s.split_once("://").is_some_and(|(proto, addr)| {
            protocol(&proto.to_ascii_uppercase())
                && proto.bytes().all(|b| b.is_ascii_lowercase())
                && addr.parse::<std::net::SocketAddr>().is_ok()
        })
    };
    let Some(rest) = name.strip_prefix("FLEETGROUPS_") else {
        return false;
    };
    if rest == "SERVICE_HOST" {
        return is_ip(value);
    }
    if let Some(port) = rest.strip_prefix("SERVICE_PORT") {
        // `SERVICE_PORT`, or `SERVICE_PORT_<NAME>` for a named port (its name upper-cased,
        // `-` turned into `_`).
        let named = port.strip_prefix('_').is_some_and(|n| {
            !n.is_empty()
                && n.bytes()
                    .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
        });
        return (port.is_empty() || named) && is_port(value);
    }
    if rest == "PORT" {
        return is_url(value);
    }
    let Some(link) = rest.strip_prefix("PORT_") else {
        return false;
    };
    let mut parts = link.split('_');
    let (Some(number), Some(proto)) = (parts.next(), parts.next()) else {
        return false;
    };
    if !is_port(number) || !protocol(proto) {
        return false;
    }
    match (parts.next(), parts.next()) {
        (None, _) => is_url(value),
        (Some("PROTO"), None) => value == proto.to_ascii_lowercase(),
        (Some("PORT"), None) => is_port(value),
        (Some("ADDR"), None) => is_ip(value),
        _ => false,
    }
}

/// The value of variable `name` as the type of its key's default: an integer, a
/// boolean, a comma-separated list, or the text itself.
fn env_value(name: &str, raw: &str, default: &toml::Value) -> Result<toml::Value, ConfigError> {
    Ok(match default {
        toml::Value::Integer(_) => raw
            .trim()
            .parse::<i64>()
            .map(toml::Value::Integer)
            .map_err(|_| ConfigError(format!("{name}: expected an integer, got {raw:?}")))?,
        toml::Value::Boolean(_) => raw
            .trim()
            .parse::<bool>()
            .map(toml::Value::Boolean)
            .map_err(|_| ConfigError(format!("{name}: expected true or false, got {raw:?}")))?,
        // A list is comma-separated: `FLEETGROUPS_METRICS_ALLOWED_NETWORKS=10.0.0.0/8,::1`.
        toml::Value::Array(_) => toml::Value::Array(
            raw.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| toml::Value::String(s.to_string()))
                .collect(),
        ),
        _ => toml::Value::String(raw.to_string()),
    })
}

/// Applies the `FLEETGROUPS_*` variables that name settings; returns the service-link
/// variables it ignored. Any other name is an error naming it.
fn apply_env(
    table: &mut toml::Table,
    env: &BTreeMap<String, String>,
) -> Result<Vec<String>, ConfigError> {
    let keys = known_keys();
    let mut ignored = Vec::new();
    for (name, raw) in env {
        if name == "FLEETGROUPS_CONFIG"
            || name == SYSTEM_CONFIG_ENV
            || name == FAULT_FAIL_FLUSH_AFTER
            || name == crate::build_info::REVISION_ENV
        {
            continue;
        }
        let found = keys
            .iter()
            .find(|(section, key, _)| &env_name(section, key) == name);
        let Some((section, key, default)) = found else {
            if service_link(name, raw) {
                ignored.push(name.clone());
                continue;
            }
            return Err(ConfigError(format!(
                "{name}: unknown environment variable (no such configuration key)"
            )));
        };
        let value = env_value(name, raw, default)?;
        if section.is_empty() {
            table.insert(key.clone(), value);
        } else {
            let entry = table
                .entry(section.clone())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            match entry {
                toml::Value::Table(t) => {
                    t.insert(key.clone(), value);
                }
                _ => {
                    return Err(ConfigError(format!("{section}: must be a table")));
                }
            }
        }
    }
    Ok(ignored)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(env: &[(&str, &str)], file: Option<&str>) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let mut overrides = Overrides::default();
        if let Some(text) = file {
            let p = dir.path().join("c.toml");
            std::fs::write(&p, text).unwrap();
            overrides.config_file = Some(p);
        } else {
            // Point at an empty file so a ./config.toml in the working directory
            // cannot influence the test.
            let p = dir.path().join("empty.toml");
            std::fs::write(&p, "").unwrap();
            overrides.config_file = Some(p);
        }
        let env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::load_from(&overrides, &env)
    }

    #[test]
    fn syntax_errors_name_the_line_and_column() {
        let e = load(
            &[],
            Some("listen = \"127.0.0.1:8080\"\n[limits]\nmax_body_bytes = = 5\n"),
        )
        .unwrap_err();
        assert!(e.0.contains(": line 3, column 18: "), "{e}");
        // Columns count characters, not bytes.
        let e = load(&[], Some("# ünïcödé\nlisten = \"x\" y\n")).unwrap_err();
        assert!(e.0.contains(": line 2, column 14: "), "{e}");
        assert_eq!(line_and_column("ab\ncd", 0), (1, 1));
        assert_eq!(line_and_column("ab\ncd", 3), (2, 1));
        assert_eq!(line_and_column("ab\ncd", 99), (2, 3));
        assert_eq!(line_and_column("é", 1), (1, 1));
    }

    #[test]
    fn shipped_config_equals_defaults() {
        let text = include_str!("../config.toml");
        assert_eq!(load(&[], Some(text)).unwrap(), Config::default());
    }

    #[test]
    fn a_key_in_the_wrong_place_says_where_it_belongs() {
        // The common slip: a top-level key appended at the end of the file.
        for (file, says) in [
            (
                "[limits]\nmax_body_bytes = 5\nlisten = \"0.0.0.0:1\"\n",
                "limits.listen: unknown key; `listen` is a top-level key: put it above the first [section] of the file (after [limits], TOML reads it as limits.listen)",
            ),
            (
                "durability = \"relaxed\"\n",
                "durability: unknown key; `durability` belongs in the [storage] section",
            ),
            (
                "[auth]\ncache_mb = 9\n",
                "`cache_mb` belongs in the [storage] section",
            ),
        ] {
            let e = load(&[], Some(file)).unwrap_err();
            assert!(e.0.ends_with(says), "{e}");
        }
        // A key known nowhere keeps toml's own message.
        let e = load(&[], Some("[limits]\nnonsense = 1\n")).unwrap_err();
        assert!(
            e.0.contains("limits.nonsense: unknown field `nonsense`"),
            "{e}"
        );
    }

    #[test]
    fn precedence_is_env_over_file() {
        let c = load(
            &[("FLEETGROUPS_LIMITS_MAX_BODY_BYTES", "4096"), ("FLEETGROUPS_LISTEN", "0.0.0.0:9000")],
            Some("listen = \"127.0.0.1:1\"\n[limits]\nmax_body_bytes = 2048\nrequests_per_minute = 5\n"),
        )
        .unwrap();
        assert_eq!(c.limits.max_body_bytes, 4096);
        assert_eq!(c.listen, "0.0.0.0:9000");
        assert_eq!(c.limits.requests_per_minute, 5);
    }

    #[test]
    fn fault_switch_is_the_only_extra_variable() {
        let c = load(&[(FAULT_FAIL_FLUSH_AFTER, "3")], None).unwrap();
        assert_eq!(c.fault.fail_flush_after, Some(3));
        assert!(!c.to_redacted_toml().contains("fault"));
        let e = load(&[("FLEETGROUPS_FAULT_OTHER", "3")], None).unwrap_err();
        assert!(e.0.contains("FLEETGROUPS_FAULT_OTHER"), "{e}");
    }

    #[test]
    fn the_build_revision_variable_is_not_a_setting_and_not_refused() {
        // CI exports it for `cargo build` and then runs the binary in the same
        // environment; refusing it would stop every start there.
        let c = load(&[(crate::build_info::REVISION_ENV, "v1.2.3-abc")], None).unwrap();
        assert_eq!(c, Config::default());
        let e = load(&[("FLEETGROUPS_BUILD_OTHER", "x")], None).unwrap_err();
        assert!(e.0.contains("FLEETGROUPS_BUILD_OTHER"), "{e}");
    }

    #[test]
    fn errors_name_the_key() {
        let e = load(&[], Some("[limits]\nmax_bodyy = 1\n")).unwrap_err();
        assert!(e.0.contains("max_bodyy"), "{e}");
        let e = load(&[], Some("[limits]\nmax_body_bytes = \"big\"\n")).unwrap_err();
        assert!(
            e.0.starts_with("limits.max_body_bytes: invalid type"),
            "{e}"
        );
        let e = load(&[], Some("[limitz]\nx = 1\n")).unwrap_err();
        assert!(e.0.starts_with("limitz"), "{e}");
        let e = load(&[("FLEETGROUPS_LIMITS_MAX_BODY_BYTES", "x")], None).unwrap_err();
        assert!(e.0.contains("FLEETGROUPS_LIMITS_MAX_BODY_BYTES"), "{e}");
        let e = load(&[(FAULT_FAIL_FLUSH_AFTER, "x")], None).unwrap_err();
        assert!(e.0.contains(FAULT_FAIL_FLUSH_AFTER), "{e}");
        let e = load(&[("FLEETGROUPS_NOPE", "1")], None).unwrap_err();
        assert!(e.0.contains("FLEETGROUPS_NOPE"), "{e}");
        let e = load(&[], Some("listen = \"nowhere\"\n")).unwrap_err();
        assert!(e.0.starts_with("listen"), "{e}");
        let e = load(&[], Some("[storage]\ndurability = \"sometimes\"\n")).unwrap_err();
        assert!(
            e.0.starts_with("storage.durability:") && e.0.contains("sometimes"),
            "{e}"
        );
    }

    #[test]
    fn log_level_takes_directives_and_names_the_key_when_bad() {
        let c = load(
            &[],
            Some("[log]\nlevel = \"info,fleetgroups::access=off\"\n"),
        )
        .unwrap();
        assert_eq!(c.log.level, "info,fleetgroups::access=off");
        let c = load(&[("FLEETGROUPS_LOG_LEVEL", "warn,fleetgroups=debug")], None).unwrap();
        assert_eq!(c.log.level, "warn,fleetgroups=debug");
        for bad in ["shout", "info,fleetgroups=loud", "", "info,fleetgroups"] {
            let text = format!("[log]\nlevel = {bad:?}\n");
            let e = load(&[], Some(&text)).unwrap_err();
            assert!(e.0.starts_with("log.level: "), "{bad:?}: {e}");
        }
    }

    #[test]
    fn log_access_is_all_errors_or_off() {
        assert_eq!(Config::default().log.access, AccessLog::All);
        for (text, want) in [
            ("all", AccessLog::All),
            ("errors", AccessLog::Errors),
            ("off", AccessLog::Off),
        ] {
            let c = load(&[("FLEETGROUPS_LOG_ACCESS", text)], None).unwrap();
            assert_eq!(c.log.access, want);
        }
        let e = load(&[], Some("[log]\naccess = \"some\"\n")).unwrap_err();
        assert!(e.0.starts_with("log.access:"), "{e}");
        assert!(AccessLog::All.logs(200) && AccessLog::All.logs(500));
        assert!(!AccessLog::Errors.logs(399) && AccessLog::Errors.logs(400));
        assert!(!AccessLog::Off.logs(500));
    }

    #[test]
    fn metrics_allowed_networks_are_cidrs_named_when_bad() {
        let nets = |c: &Config| {
            c.metrics
                .allowed_networks
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
        };
        assert_eq!(
            nets(&Config::default()),
            [
                "127.0.0.0/8",
                "::1/128",
                "10.0.0.0/8",
                "172.16.0.0/12",
                "192.168.0.0/16",
                "fc00::/7",
                "fe80::/10"
            ]
        );
        let c = load(
            &[],
            Some("[metrics]\nallowed_networks = [\"10.1.0.0/16\", \"2001:db8::1\"]\n"),
        )
        .unwrap();
        assert_eq!(nets(&c), ["10.1.0.0/16", "2001:db8::1/128"]);
        let c = load(
            &[(
                "FLEETGROUPS_METRICS_ALLOWED_NETWORKS",
                "127.0.0.1/32, ::1/128",
            )],
            None,
        )
        .unwrap();
        assert_eq!(nets(&c), ["127.0.0.1/32", "::1/128"]);
        // check-config prints them as they were given.
        assert!(c
            .to_redacted_toml()
            .contains("allowed_networks = [\"127.0.0.1/32\", \"::1/128\"]"));
        for (bad, says) in [
            ("[\"10.0.0.0/33\"]", "0 to 32"),
            ("[\"192.168.1.0/16\"]", "the network is 192.168.0.0/16"),
            ("[\"gateway.local\"]", "not an IP network"),
            ("[\"127.0.0.0/8\", 8]", "invalid type"),
            ("\"127.0.0.0/8\"", "invalid type"),
            ("[]", "at least one network"),
        ] {
            let text = format!("[metrics]\nallowed_networks = {bad}\n");
            let e = load(&[], Some(&text)).unwrap_err();
            assert!(
                e.0.starts_with("metrics.allowed_networks: ") && e.0.contains(says),
                "{bad}: {e}"
            );
        }
        let e = load(
            &[("FLEETGROUPS_METRICS_ALLOWED_NETWORKS", "10.0.0.0/8,nope")],
            None,
        )
        .unwrap_err();
        assert!(e.0.starts_with("metrics.allowed_networks: "), "{e}");
    }

    /// What Kubernetes injects for `kind: Service, name: fleetgroups` with a port 8080
    /// named `http` (IPv4) and the same over IPv6.
    const SERVICE_LINKS: [(&str, &str); 9] = [
        ("FLEETGROUPS_PORT", "tcp://10.0.0.1:8080"),
        ("FLEETGROUPS_PORT_8080_TCP", "tcp://10.0.0.1:8080"),
        ("FLEETGROUPS_PORT_8080_TCP_PROTO", "tcp"),
        ("FLEETGROUPS_PORT_8080_TCP_PORT", "8080"),
        ("FLEETGROUPS_PORT_8080_TCP_ADDR", "10.0.0.1"),
        ("FLEETGROUPS_SERVICE_HOST", "10.0.0.1"),
        ("FLEETGROUPS_SERVICE_PORT", "8080"),
        ("FLEETGROUPS_SERVICE_PORT_HTTP", "8080"),
        ("FLEETGROUPS_PORT_9090_UDP", "udp://[fd00::1]:9090"),
    ];

    #[test]
    fn kubernetes_service_links_are_ignored_and_named() {
        let c = load(&SERVICE_LINKS, None).unwrap();
        let mut names: Vec<&str> = SERVICE_LINKS.iter().map(|(k, _)| *k).collect();
        names.sort();
        assert_eq!(c.ignored_env, names);
        // Nothing else changes: the effective configuration is the default one.
        assert_eq!(
            Config {
                ignored_env: Vec::new(),
                ..c.clone()
            },
            Config::default()
        );
        let note = c.ignored_env_note().unwrap();
        assert!(note.contains("9 Kubernetes service-link"), "{note}");
        for name in names {
            assert!(note.contains(name), "{note}");
        }
        assert_eq!(Config::default().ignored_env_note(), None);
        // Alongside real settings, which still apply.
        let mut env = SERVICE_LINKS.to_vec();
        env.push(("FLEETGROUPS_LISTEN", "0.0.0.0:8080"));
        assert_eq!(load(&env, None).unwrap().listen, "0.0.0.0:8080");
    }

    #[test]
    fn look_alikes_and_misspelt_settings_still_stop_the_start() {
        for (name, value) in [
            // Someone guessing at a port setting: the value is not what Kubernetes writes.
            ("FLEETGROUPS_PORT", "8080"),
            ("FLEETGROUPS_PORT_8080_TCP", "10.0.0.1:8080"),
            ("FLEETGROUPS_PORT_8080_TCP_PROTO", "udp"),
            ("FLEETGROUPS_PORT_8080_TCP_PORT", "http"),
            ("FLEETGROUPS_PORT_8080_TCP_ADDR", "fleetgroups.local"),
            ("FLEETGROUPS_PORT_8080_TCP_PROTOCOL", "tcp"),
            ("FLEETGROUPS_PORT_80800_TCP", "tcp://10.0.0.1:8080"),
            ("FLEETGROUPS_PORT_8080_HTTP", "tcp://10.0.0.1:8080"),
            ("FLEETGROUPS_SERVICE_HOST", "fleetgroups"),
            ("FLEETGROUPS_SERVICE_PORT", "0"),
            ("FLEETGROUPS_SERVICE_PORT_http", "8080"),
            ("FLEETGROUPS_SERVICE_PORTS", "8080"),
            // Plain misspellings of real settings.
            ("FLEETGROUPS_LISTEN_ADDR", "0.0.0.0:8080"),
            ("FLEETGROUPS_LIMITS_MAX_BODY_BYTE", "4096"),
            ("FLEETGROUPS_LOG_LEVLE", "debug"),
        ] {
            let mut env = SERVICE_LINKS.to_vec();
            env.retain(|(k, _)| *k != name);
            env.push((name, value));
            let e = load(&env, None).unwrap_err();
            assert!(
                e.0.starts_with(name) && e.0.contains("unknown environment variable"),
                "{name}={value}: {e}"
            );
        }
    }

    #[test]
    fn no_setting_is_named_like_a_service_link() {
        // If one ever were, it would be read as the setting (real keys match first) and
        // a Kubernetes pod would get the Service's address as its value.
        for (section, key, _) in known_keys() {
            let name = if section.is_empty() {
                format!("FLEETGROUPS_{}", key.to_uppercase())
            } else {
                format!(
                    "FLEETGROUPS_{}_{}",
                    section.to_uppercase(),
                    key.to_uppercase()
                )
            };
            assert!(
                name != "FLEETGROUPS_PORT"
                    && !name.starts_with("FLEETGROUPS_PORT_")
                    && !name.starts_with("FLEETGROUPS_SERVICE_"),
                "{name} collides with Kubernetes service links"
            );
        }
    }
}
