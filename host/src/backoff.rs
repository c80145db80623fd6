//! Waiting between retries of something that keeps failing.
//!
//! Every loop that talks to Redis retries through outages; doubling the wait
//! keeps a dead server from being hammered, and waking on shutdown keeps an
//! outage from delaying a stop.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// Exponential backoff between retries of a failing operation.
#[derive(Debug)]
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            next: Duration::from_millis(100),
        }
    }
}

impl Backoff {
    const MAX: Duration = Duration::from_secs(5);

    /// The delay the next `wait` will take.
    pub fn peek(&self) -> Duration {
        self.next
    }

    /// Sleeps for the current delay and doubles it; `false` if `shutdown`
    /// fired meanwhile.
    pub async fn wait(&mut self, shutdown: &CancellationToken) -> bool {
        let delay = self.next;
        self.next = (self.next * 2).min(Self::MAX);
        tokio::select! {
            _ = tokio::time::sleep(delay) => true,
            _ = shutdown.cancelled() => false,
        }
    }

    /// Sleeps for the current delay and doubles it, whatever else happens:
    /// for work that must be tried a while longer even while stopping.
    pub async fn pause(&mut self) {
        let delay = self.next;
        self.next = (self.next * 2).min(Self::MAX);
        tokio::time::sleep(delay).await;
    }

    /// Starts over after a success.
    pub fn reset(&mut self) {
        *self = Backoff::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn backoff_doubles_and_stops_on_shutdown() {
        let shutdown = CancellationToken::new();
        let mut backoff = Backoff::default();
        assert_eq!(backoff.peek(), Duration::from_millis(100));
        tokio::time::pause();
        assert!(backoff.wait(&shutdown).await);
        assert_eq!(backoff.peek(), Duration::from_millis(200));
        shutdown.cancel();
        assert!(!backoff.wait(&shutdown).await);
        backoff.reset();
        assert_eq!(backoff.peek(), Duration::from_millis(100));
    }
}
