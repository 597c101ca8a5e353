//! systemd's notify protocol (`sd_notify`), written out instead of linking libsystemd or
//! adding a crate: one datagram per state change to the Unix socket named by
//! `$NOTIFY_SOCKET` (a path, or `@name` for the abstract namespace). The server sends
//! `READY=1` once the store is open and the listener bound, `STOPPING=1` when a
//! shutdown begins, and `WATCHDOG=1` every `$WATCHDOG_USEC / 2` — but only while the
//! probe it is given (the server passes `App::store_answers_reads`) says yes in time,
//! so a wedged store, a starved runtime or an exhausted blocking pool makes systemd
//! restart the service.
//!
//! Without `$NOTIFY_SOCKET` (a terminal, a test, a non-systemd supervisor) every call
//! is a no-op. A failed send is logged and otherwise ignored: notification is advice to
//! the supervisor and must never stop the server.

use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::Arc;
use std::time::Duration;

/// The log target, kept from before the module moved into a folder: `log.level`
/// directives name it (`fleetgroups::systemd=debug`), so a move must not change it.
const LOG: &str = "fleetgroups::systemd";

/// Where and how to notify systemd; built once from the environment.
#[derive(Debug, Default)]
pub struct Notifier {
    target: Option<SocketAddr>,
    watchdog: Option<Duration>,
}

impl Notifier {
    /// Reads `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID` from the environment.
    pub fn from_env() -> Notifier {
        let get = |k: &str| std::env::var(k).ok();
        Self::from_vars(
            get("NOTIFY_SOCKET").as_deref(),
            get("WATCHDOG_USEC").as_deref(),
            get("WATCHDOG_PID").as_deref(),
            std::process::id(),
        )
    }

    /// The parsing behind `from_env`, separate so it is testable without touching the
    /// process environment.
    pub fn from_vars(
        socket: Option<&str>,
        watchdog_usec: Option<&str>,
        watchdog_pid: Option<&str>,
        own_pid: u32,
    ) -> Notifier {
        let target = socket.and_then(|s| match parse_address(s) {
            Ok(addr) => addr,
            Err(e) => {
                tracing::warn!(target: LOG, error = %e, "NOTIFY_SOCKET is unusable; not notifying systemd");
                None
            }
        });
        // systemd sets WATCHDOG_PID to the main process; a child that inherited the
        // variables (none today) must not ping on the parent's behalf.
        let for_us = watchdog_pid.map_or(true, |p| p.trim().parse::<u32>().ok() == Some(own_pid));
        let watchdog = watchdog_usec
            .and_then(|u| u.trim().parse::<u64>().ok())
            .filter(|&u| u > 0 && for_us && target.is_some())
            .map(|u| Duration::from_micros(u / 2).max(Duration::from_millis(1)));
        Notifier { target, watchdog }
    }

    /// Whether a supervisor listens at all (the tests' view of `target`).
    #[cfg(test)]
    fn enabled(&self) -> bool {
        self.target.is_some()
    }

    /// How often to ping the watchdog (half of `WATCHDOG_USEC`), when it is armed.
    #[cfg(test)]
    fn watchdog_interval(&self) -> Option<Duration> {
        self.watchdog
    }

    /// Sends one notification (`KEY=VALUE` lines). Errors are logged, not returned.
    pub fn notify(&self, state: &str) {
        let Some(addr) = &self.target else { return };
        let sent = UnixDatagram::unbound().and_then(|s| s.send_to_addr(state.as_bytes(), addr));
        if let Err(e) = sent {
            tracing::warn!(target: LOG, error = %e, "could not notify systemd");
        }
    }

    /// `READY=1` with a status line for `systemctl status`.
    pub fn ready(&self, status: &str) {
        self.notify(&format!("READY=1\nSTATUS={status}"));
    }

    /// `STOPPING=1`: a shutdown has begun.
    pub fn stopping(&self) {
        self.notify("STOPPING=1\nSTATUS=shutting down");
    }

    /// Spawns the watchdog task when `WATCHDOG_USEC` asks for one. Each tick runs
    /// `probe` (blocking: whether the store answers) off the async workers, bounded by
    /// the interval itself: a probe that says no or does not come back in time means no
    /// ping, so systemd sees a hung server as hung.
    pub fn spawn_watchdog<P>(self: &Arc<Self>, probe: P)
    where
        P: Fn() -> bool + Send + Sync + 'static,
    {
        let Some(every) = self.watchdog else { return };
        let notifier = Arc::clone(self);
        let probe = Arc::new(probe);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let p = Arc::clone(&probe);
                let answered = tokio::task::spawn_blocking(move || p());
                match tokio::time::timeout(every, answered).await {
                    Ok(Ok(true)) => notifier.notify("WATCHDOG=1"),
                    Ok(Ok(false)) => {
                        tracing::warn!(target: LOG, "store does not answer; withholding the watchdog ping")
                    }
                    Ok(Err(_)) | Err(_) => tracing::warn!(target: LOG,
                        "store probe did not finish in time; withholding the watchdog ping"
                    ),
                }
            }
        });
    }
}

/// `NOTIFY_SOCKET` → a socket address. `/path` is a file-system socket, `@name` an
/// abstract one (Linux). Anything else (e.g. `vsock:` from newer systemd) is refused.
fn parse_address(s: &str) -> Result<Option<SocketAddr>, String> {
    if s.is_empty() {
        return Ok(None);
    }
    if let Some(name) = s.strip_prefix('@') {
        return abstract_address(name.as_bytes()).map(Some);
    }
    if s.starts_with('/') {
        return SocketAddr::from_pathname(s)
            .map(Some)
            .map_err(|e| format!("{s}: {e}"));
    }
    Err(format!(
        "{s}: only /path and @abstract addresses are supported"
    ))
}

#[cfg(any(target_os = "linux", target_os = "android"))]
fn abstract_address(name: &[u8]) -> Result<SocketAddr, String> {
    use std::os::linux::net::SocketAddrExt;
    SocketAddr::from_abstract_name(name)
        .map_err(|e| format!("@{}: {e}", String::from_utf8_lossy(name)))
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn abstract_address(name: &[u8]) -> Result<SocketAddr, String> {
    Err(format!(
        "@{}: abstract socket addresses exist only on Linux",
        String::from_utf8_lossy(name)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_environment() {
        let n = Notifier::from_vars(Some("/run/systemd/notify"), Some("30000000"), None, 7);
        assert!(n.enabled());
        assert_eq!(n.watchdog_interval(), Some(Duration::from_secs(15)));
        let n = Notifier::from_vars(Some("@abstract/notify"), Some("2000000"), Some("7"), 7);
        assert!(n.enabled());
        assert_eq!(n.watchdog_interval(), Some(Duration::from_secs(1)));
    }

    #[test]
    fn watchdog_needs_a_socket_our_pid_and_a_positive_interval() {
        let n = Notifier::from_vars(None, Some("30000000"), None, 7);
        assert!(!n.enabled());
        assert_eq!(n.watchdog_interval(), None);
        let n = Notifier::from_vars(Some("/x"), Some("30000000"), Some("8"), 7);
        assert_eq!(n.watchdog_interval(), None);
        let n = Notifier::from_vars(Some("/x"), Some("0"), None, 7);
        assert_eq!(n.watchdog_interval(), None);
        let n = Notifier::from_vars(Some("/x"), Some("soon"), None, 7);
        assert_eq!(n.watchdog_interval(), None);
    }

    #[test]
    fn refuses_unknown_address_kinds() {
        assert!(parse_address("vsock:2:1234").is_err());
        assert!(parse_address("relative/path").is_err());
        assert_eq!(parse_address("").map(|a| a.is_none()), Ok(true));
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn sends_to_an_abstract_socket() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("fleetgroups-test-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let listener = UnixDatagram::bind_addr(&addr).unwrap();
        let n = Notifier::from_vars(Some(&format!("@{name}")), None, None, 7);
        n.notify("READY=1");
        let mut buf = [0u8; 64];
        let len = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"READY=1");
    }
}
