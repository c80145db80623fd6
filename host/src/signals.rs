//! The signals the host answers: SIGINT/SIGTERM stop it gracefully, SIGHUP
//! reloads it.
//!
//! The first SIGINT or SIGTERM cancels the process-wide token: loops stop
//! reading, finish and commit what they hold, and the process exits 0. A
//! second one exits at once (130), for when something hangs.

use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Cancels `shutdown` on the first SIGINT/SIGTERM; exits on the second.
pub fn on_signals(shutdown: CancellationToken) -> std::io::Result<()> {
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    tokio::spawn(async move {
        let mut signals = 0;
        loop {
            let name = tokio::select! {
                _ = interrupt.recv() => "SIGINT",
                _ = terminate.recv() => "SIGTERM",
            };
            signals += 1;
            if signals == 1 {
                tracing::info!(
                    "{name}: stopping after in-flight events are committed (again to force)"
                );
                shutdown.cancel();
            } else {
                tracing::warn!("{name} again: exiting now; uncommitted events stay pending and are reclaimed later");
                std::process::exit(130);
            }
        }
    });
    Ok(())
}

/// A channel that receives one message per SIGHUP.
pub fn on_hangup() -> std::io::Result<mpsc::Receiver<()>> {
    let mut hangup = signal(SignalKind::hangup())?;
    let (tx, rx) = mpsc::channel(1);
    tokio::spawn(async move {
        while hangup.recv().await.is_some() {
            // A reload already queued covers this one too.
            let _ = tx.try_send(());
        }
    });
    Ok(rx)
}
