//! Graceful shutdown. SIGTERM or Ctrl-C flips one flag every task watches: the HTTP server stops
//! taking requests, the pipeline stops reading, delivers what it had gathered (for at most
//! [`GRACE`]), confirms it, and closes the replication connection; then the process exits 0.

use std::time::Duration;

use tokio::sync::watch;
use tracing::info;

/// How long the in-flight batch may take to deliver after shutdown was asked for. What is not
/// delivered by then stays unconfirmed: the slot replays it at the next start.
pub const GRACE: Duration = Duration::from_secs(10);

/// A handle on the shutdown flag; cheap to clone.
#[derive(Clone)]
pub struct Shutdown {
    rx: watch::Receiver<bool>,
}

/// Starts listening for SIGTERM and Ctrl-C (SIGINT).
pub fn on_signal() -> Shutdown {
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        let terminate = async {
            #[cfg(unix)]
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut sigterm) => {
                    sigterm.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
            #[cfg(not(unix))]
            std::future::pending::<()>().await
        };
        let which = tokio::select! {
            _ = tokio::signal::ctrl_c() => "Ctrl-C",
            _ = terminate => "SIGTERM",
        };
        info!("{which}: shutting down (the batch in flight gets up to {GRACE:?} to deliver)");
        let _ = tx.send(true);
        // Keep the sender: a dropped sender must not read as a second request.
        std::future::pending::<()>().await
    });
    Shutdown { rx }
}

impl Shutdown {
    /// A flag of its own that flips with this one, or when the returned handle is used or
    /// dropped (one tenant's pipeline stopped while the process runs on).
    pub fn child(&self) -> (Shutdown, tokio::sync::oneshot::Sender<()>) {
        let (tx, rx) = watch::channel(false);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let parent = self.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = parent.requested_now() => {}
                _ = stopped => {}
            }
            let _ = tx.send(true);
            // Kept until every holder is gone: a dropped sender must not read as a request.
            tx.closed().await;
        });
        (Shutdown { rx }, stop)
    }

    pub fn requested(&self) -> bool {
        *self.rx.borrow()
    }

    /// Resolves once shutdown was asked for.
    pub async fn requested_now(&self) {
        let mut rx = self.rx.clone();
        let _ = rx.wait_for(|asked| *asked).await;
    }

    /// Resolves [`GRACE`] after shutdown was asked for.
    pub async fn grace_over(&self) {
        self.requested_now().await;
        tokio::time::sleep(GRACE).await;
    }
}
