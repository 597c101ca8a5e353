//! Process signals: the first SIGTERM or SIGINT starts a graceful shutdown; a second one
//! exits at once. Exiting at once loses no acknowledged write, because a write is only
//! acknowledged after it is fsynced. SIGHUP asks for a reload (`reload.rs`: TLS
//! certificate and key, log level) and never stops the server. SIGUSR1, SIGUSR2 and
//! SIGALRM are caught and ignored, logged the first time each arrives: their default
//! action is to kill the process, and an operator's or a script's stray signal must not
//! take the gateway down.
//!
//! The handlers are installed (`Signals::install`) before the store is opened and long
//! before systemd hears READY=1, so a stop request that arrives early is a graceful
//! stop too, never the default "die on SIGTERM", and an early SIGHUP waits for the
//! reload task instead of killing the process.

use tokio::signal::unix::{signal, Signal, SignalKind};

/// The log target, kept from before the module moved into a folder: `log.level`
/// directives name it (`fleetgroups::signals=debug`), so a move must not change it.
const LOG: &str = "fleetgroups::signals";

/// Installed SIGTERM and SIGINT handlers, and SIGHUP until `reloads` takes it.
pub struct Signals {
    term: Signal,
    int: Signal,
    hup: Option<Signal>,
}

/// SIGHUPs, one `next()` per reload request (several pending ones count as one).
pub struct Reloads(Signal);

impl Reloads {
    /// Waits for the next SIGHUP.
    pub async fn next(&mut self) {
        // `recv` yields `None` only if the signal driver goes away, i.e. the runtime is
        // shutting down; then no reload can happen any more.
        if self.0.recv().await.is_none() {
            std::future::pending::<()>().await;
        }
    }
}

impl Signals {
    /// Replaces the default actions of SIGTERM, SIGINT, SIGHUP, SIGUSR1, SIGUSR2 and
    /// SIGALRM. Needs a Tokio runtime (the ignored signals get a task that logs them).
    pub fn install() -> std::io::Result<Signals> {
        let signals = Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: Some(signal(SignalKind::hangup())?),
        };
        for (kind, name) in [
            (SignalKind::user_defined1(), "SIGUSR1"),
            (SignalKind::user_defined2(), "SIGUSR2"),
            (SignalKind::alarm(), "SIGALRM"),
        ] {
            let mut caught = signal(kind)?;
            tokio::spawn(async move {
                let mut first = true;
                while caught.recv().await.is_some() {
                    if first {
                        tracing::info!(target: LOG, "{name} received; ignored (only SIGHUP, SIGTERM and SIGINT mean something here)");
                        first = false;
                    } else {
                        tracing::debug!(target: LOG, "{name} received; ignored");
                    }
                }
            });
        }
        Ok(signals)
    }

    /// The SIGHUP stream for the reload task; `None` after the first call. Until it is
    /// taken (and if it never is), a SIGHUP does nothing at all.
    pub fn reloads(&mut self) -> Option<Reloads> {
        self.hup.take().map(Reloads)
    }

    /// Resolves on the first SIGTERM/SIGINT and arms the "second signal exits" handler.
    pub async fn shutdown(self) {
        let Signals {
            mut term, mut int, ..
        } = self;
        tokio::select! {
            _ = term.recv() => tracing::info!(target: LOG, "SIGTERM received"),
            _ = int.recv() => tracing::info!(target: LOG, "SIGINT received"),
        }
        tokio::spawn(async move {
            tokio::select! {
                _ = term.recv() => {},
                _ = int.recv() => {},
            }
            tracing::warn!(target: LOG, "second signal: exiting now (acknowledged writes are already on disk)");
            // The line above is only queued (log.rs); give the writer its bounded moment.
            crate::log::flush();
            std::process::exit(1);
        });
    }
}
