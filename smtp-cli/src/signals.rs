//! Waiting for SIGTERM or Ctrl-C (SIGINT).

use tokio::signal::unix::{signal, Signal, SignalKind};

/// SIGTERM and SIGINT handlers, installed when this is made: a signal that arrives before
/// anything waits on it is kept, never fatal (a supervisor may stop a server the moment it
/// says it listens).
pub struct Shutdown {
    term: Signal,
    int: Signal,
}

impl Shutdown {
    /// Installs the handlers now.
    pub fn install() -> std::io::Result<Shutdown> {
        Ok(Shutdown { term: signal(SignalKind::terminate())?, int: signal(SignalKind::interrupt())? })
    }

    /// Resolves on SIGTERM or SIGINT (or at once for one that came earlier).
    pub async fn wait(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}
