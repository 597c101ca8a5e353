//! SIGHUP: reload what can change without a restart — the TLS certificate and key, and
//! the log level — by reading the configuration again exactly as the start did (the
//! same `--config` file or `FLEETGROUPS_CONFIG`, the same environment and flags).
//!
//! Everything else stays as it started: a changed setting that needs a restart is named
//! in one warning and otherwise ignored, so a reload can never leave the server half
//! reconfigured (a new `listen` with the old socket, a new `data_dir` with the old
//! store). A reload that fails — the file no longer parses, a value is invalid, the new
//! certificate or key is unreadable or does not fit — changes nothing and logs why;
//! the TLS pair and the level are applied independently, each only when it is valid.

use crate::config::{Config, Overrides};
use crate::server::signals::Reloads;
use crate::server::tls::Tls;

/// The log target, kept from before the module moved into a folder: `log.level`
/// directives name it (`fleetgroups::reload=debug`), so a move must not change it.
const LOG: &str = "fleetgroups::reload";

/// What SIGHUP acts on, and the settings the server runs with now.
pub struct Reloader {
    overrides: Overrides,
    /// The start configuration, with the reloadable fields as last applied.
    running: Config,
    tls: Option<Tls>,
    level: crate::log::Level,
}

impl Reloader {
    pub fn new(
        overrides: Overrides,
        running: Config,
        tls: Option<Tls>,
        level: crate::log::Level,
    ) -> Reloader {
        Reloader {
            overrides,
            running,
            tls,
            level,
        }
    }

    /// Reloads on every SIGHUP, for as long as the server runs.
    pub async fn run(mut self, mut reloads: Reloads) {
        loop {
            reloads.next().await;
            // Reading a few small files: done in place rather than on the blocking pool,
            // which a busy server may have filled with argon2 work.
            tokio::task::block_in_place(|| self.reload());
        }
    }

    /// One reload: read the configuration, apply the TLS pair and the log level.
    pub fn reload(&mut self) {
        tracing::info!(target: LOG, "SIGHUP received: reloading the configuration");
        let new = match Config::load(&self.overrides) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(target: LOG, "reload failed, keeping the running settings: {e}");
                return;
            }
        };
        let restart = needs_restart(&self.running, &new);
        if !restart.is_empty() {
            tracing::warn!(target: LOG,
                "changed settings that only take effect after a restart (kept as they are until then): {}",
                restart.join(", ")
            );
        }
        if let Some(tls) = &self.tls {
            if tls_on(&new) {
                match tls.reload(&new.tls) {
                    Ok(()) => {
                        tracing::info!(target: LOG, cert = %new.tls.cert, "TLS certificate and key reloaded");
                        self.running.tls = new.tls.clone();
                    }
                    Err(e) => tracing::error!(target: LOG,
                        "TLS certificate not reloaded, new connections keep the old one: {e}"
                    ),
                }
            }
        }
        if new.log.level != self.running.log.level {
            match self.level.set(&new.log.level) {
                Ok(()) => {
                    // Said once the new level is in force (so a line after it follows
                    // the new level), and as a warning, so that a change to a quieter
                    // level is still on record.
                    tracing::warn!(target: LOG,
                        "log level changes from {} to {}",
                        self.running.log.level,
                        new.log.level
                    );
                    self.running.log.level = new.log.level.clone();
                    tracing::info!(target: LOG, "log level is now {}", new.log.level);
                }
                Err(e) => {
                    tracing::error!(target: LOG, "{e}; the log level stays {}", self.running.log.level)
                }
            }
        }
        tracing::info!(target: LOG, "reload done");
    }
}

fn tls_on(config: &Config) -> bool {
    !config.tls.cert.is_empty() && !config.tls.key.is_empty()
}

/// The settings (`section.key`) whose value differs between `running` and `new` and that
/// a reload does not apply: everything except the TLS paths while TLS stays on, and
/// `log.level`. Turning TLS on or off changes the listener's protocol: a restart.
fn needs_restart(running: &Config, new: &Config) -> Vec<String> {
    let reloadable = |key: &str| match key {
        "log.level" => true,
        "tls.cert" | "tls.key" => tls_on(running) == tls_on(new),
        _ => false,
    };
    let (old, new) = (flatten(running), flatten(new));
    let mut changed: Vec<String> = old
        .iter()
        .filter(|(k, v)| new.get(*k) != Some(v))
        .map(|(k, _)| k.clone())
        .chain(new.keys().filter(|k| !old.contains_key(*k)).cloned())
        .filter(|k| !reloadable(k))
        .collect();
    changed.sort();
    changed.dedup();
    changed
}

/// Every setting as `section.key` (or `key` at the top) → its value.
fn flatten(config: &Config) -> std::collections::BTreeMap<String, toml::Value> {
    let mut out = std::collections::BTreeMap::new();
    if let Ok(toml::Value::Table(top)) = toml::Value::try_from(config) {
        for (k, v) in top {
            match v {
                toml::Value::Table(section) => {
                    for (sk, sv) in section {
                        out.insert(format!("{k}.{sk}"), sv);
                    }
                }
                other => {
                    out.insert(k, other);
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_non_reloadable_changes_need_a_restart() {
        let base = Config::default();
        assert!(needs_restart(&base, &base).is_empty());

        let mut new = base.clone();
        new.log.level = "debug".parse().expect("a level");
        assert!(needs_restart(&base, &new).is_empty());

        new.listen = "127.0.0.1:9".into();
        new.limits.max_body_bytes = 4096;
        new.log.format = crate::config::LogFormat::Json;
        assert_eq!(
            needs_restart(&base, &new),
            ["limits.max_body_bytes", "listen", "log.format"]
        );

        // Turning TLS on is a restart; new paths while it stays on are a reload.
        let mut on = base.clone();
        on.tls.cert = "a.pem".into();
        on.tls.key = "k.pem".into();
        assert_eq!(needs_restart(&base, &on), ["tls.cert", "tls.key"]);
        let mut moved = on.clone();
        moved.tls.cert = "b.pem".into();
        assert!(needs_restart(&on, &moved).is_empty());
        assert_eq!(needs_restart(&on, &base), ["tls.cert", "tls.key"]);
    }
}
