//! Process signals: the first SIGTERM or SIGINT starts a graceful shutdown; a second one
//! exits at once. Exiting at once loses no acknowledged write, because a write is only
//! acknowledged after it is fsynced.
//!
//! The handlers are installed (`Signals::install`) before the store is opened and long
//! before systemd hears READY=1, so a stop request that arrives early is a graceful
//! stop too, never the default "die on SIGTERM".

use tokio::signal::unix::{signal, Signal, SignalKind};

/// Installed SIGTERM and SIGINT handlers.
pub struct Signals {
    term: Signal,
    int: Signal,
}

impl Signals {
    /// Replaces the default actions of SIGTERM and SIGINT. Needs a Tokio runtime.
    pub fn install() -> std::io::Result<Signals> {
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    /// Resolves on the first SIGTERM/SIGINT and arms the "second signal exits" handler.
    pub async fn shutdown(self) {
        let Signals { mut term, mut int } = self;
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = int.recv() => tracing::info!("SIGINT received"),
        }
        tokio::spawn(async move {
            tokio::select! {
                _ = term.recv() => {},
                _ = int.recv() => {},
            }
            tracing::warn!("second signal: exiting now (acknowledged writes are already on disk)");
            // The line above is only queued (log.rs); give the writer its bounded moment.
            crate::log::flush();
            std::process::exit(1);
        });
    }
}
