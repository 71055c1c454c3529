//! Shutdown: SIGTERM or SIGINT cancels one token that every stage watches.
//!
//! Guarantee: the first signal starts a graceful stop (stop fetching, drain, commit, leave the
//! group, exit 0 within the drain bound); a second signal exits at once, which is safe because
//! every write is idempotent and no offset moves before its data is durable.

use tokio_util::sync::CancellationToken;

/// Cancels `token` on the first SIGTERM/SIGINT; exits the process on the second.
pub fn on_signal(token: CancellationToken) {
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("signal received: shutting down (send it again to exit at once)");
        token.cancel();
        wait_for_signal().await;
        tracing::warn!("second signal: exiting without draining");
        std::process::exit(130);
    });
}

#[allow(
    clippy::expect_used,
    reason = "installed once at start, before any input; failing to is fatal"
)]
async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("install SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
