//! Process signals: the first SIGTERM or SIGINT starts a graceful shutdown; a second one
//! exits at once. Exiting at once loses no acknowledged write, because a write is only
//! acknowledged after it is fsynced.

use tokio::signal::unix::{signal, SignalKind};

/// Resolves on the first SIGTERM/SIGINT and arms the "second signal exits" handler.
pub async fn shutdown() {
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stop the server with SIGKILL");
        std::future::pending::<()>().await;
        return;
    };
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
        std::process::exit(1);
    });
}
