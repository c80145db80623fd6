//! The skeleton both loops share: step until done, wait out Redis errors,
//! recreate a consumer group that vanished, and commit with one give-up
//! policy.
//!
//! The fan-out and every subscriber loop are the same machine around a
//! different step, so the way they survive outages and stop is written once.

use std::time::Duration;

use async_trait::async_trait;
use redis::{RedisError, RedisResult};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::connection::is_nogroup;
use super::group::GroupConsumer;
use crate::backoff::Backoff;

/// How long a commit keeps retrying through a lost connection once
/// shutdown was asked; past it, what it holds stays pending for the next
/// run. Short enough that the process still stops within seconds.
pub const SHUTDOWN_PATIENCE: Duration = Duration::from_secs(5);

/// What one round of a loop came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Round {
    /// It did something, or waited for something to do.
    Continue,
    /// Nothing left to do: the loop ends.
    Done,
}

/// One loop's step, run by [`run`].
#[async_trait]
pub trait Worker: Send {
    /// Who this is, for logs: `fan-out`, or the subscriber's name.
    fn name(&self) -> &str;

    /// The consumer the loop reads through.
    fn group(&mut self) -> &mut GroupConsumer;

    /// One round; `stopping` once the loop was asked to stop (it finishes
    /// what it holds, then says [`Round::Done`]).
    async fn step(&mut self, stopping: bool) -> RedisResult<Round>;

    /// The group vanished (Redis lost it): forget what refers to it.
    fn group_lost(&mut self) {}
}

/// Runs `worker` until it is done, and gives it back; `stop` asks it to
/// stop. A Redis error is waited out with backoff, except while stopping:
/// then what the loop holds stays pending, for whoever reads the group next.
pub async fn run<W: Worker>(mut worker: W, stop: CancellationToken) -> W {
    let mut backoff = Backoff::default();
    loop {
        let stopping = stop.is_cancelled();
        match worker.step(stopping).await {
            Ok(Round::Done) => break,
            Ok(Round::Continue) => backoff.reset(),
            Err(err) if stopping => {
                tracing::warn!(
                    "{}: stopping before what it read was committed ({err}); \
                     it stays pending and is reclaimed on the next start",
                    worker.name()
                );
                break;
            }
            Err(err) if is_nogroup(&err) => {
                let stream = worker.group().queue().stream.clone();
                tracing::warn!(
                    "{}: the group of {stream} is gone; recreating it",
                    worker.name()
                );
                worker.group_lost();
                if let Err(err) = worker.group().recreate().await {
                    tracing::warn!("{}: cannot recreate it yet: {err}", worker.name());
                    backoff.wait(&stop).await;
                }
            }
            Err(err) => {
                tracing::warn!(
                    "{}: Redis error ({err}); retrying in {:?}",
                    worker.name(),
                    backoff.peek()
                );
                backoff.wait(&stop).await;
            }
        }
    }
    worker
}

/// The loops' one give-up policy for a commit: one that failed because
/// the connection did is tried again with backoff until it lands (the work
/// is done; doing it again costs more than waiting), except that once
/// `stop` fires it gets [`SHUTDOWN_PATIENCE`] more. Any other error gives
/// up at once: the entries stay pending and are reclaimed.
///
/// ```ignore
/// let mut patience = Patience::new("fan-out", &stop);
/// let skipped = loop {
///     match batch.apply(conn, ..).await {
///         Ok(skipped) => break skipped,
///         Err(err) => patience.failed(err).await?,
///     }
/// };
/// ```
pub struct Patience<'a> {
    who: &'a str,
    stop: &'a CancellationToken,
    backoff: Backoff,
    give_up_at: Option<Instant>,
}

impl<'a> Patience<'a> {
    /// The policy for a commit by `who` (for logs), stopped by `stop`.
    pub fn new(who: &'a str, stop: &'a CancellationToken) -> Self {
        Patience {
            who,
            stop,
            backoff: Backoff::default(),
            give_up_at: None,
        }
    }

    /// After a failed try: waits before the next one, or gives `err` back
    /// when the policy gives up.
    pub async fn failed(&mut self, err: RedisError) -> RedisResult<()> {
        if !is_connection_error(&err) {
            return Err(err);
        }
        if self.stop.is_cancelled() {
            let at = *self
                .give_up_at
                .get_or_insert_with(|| Instant::now() + SHUTDOWN_PATIENCE);
            if Instant::now() >= at {
                return Err(err);
            }
        }
        tracing::warn!(
            "{}: cannot commit a batch ({err}); retrying in {:?}",
            self.who,
            self.backoff.peek()
        );
        self.backoff.pause().await;
        Ok(())
    }
}

/// Whether a command failed because the connection did, or the server was
/// not ready for it (a cluster failing over, a replica still loading), not
/// because Redis refused it: the same command may then succeed.
pub fn is_connection_error(err: &RedisError) -> bool {
    err.is_io_error()
        || err.is_timeout()
        || err.is_connection_dropped()
        || err.is_cluster_error()
        || err.kind() == redis::ErrorKind::ClusterConnectionNotFound
        || matches!(
            err.code(),
            Some("LOADING" | "READONLY" | "MASTERDOWN" | "CLUSTERDOWN" | "TRYAGAIN")
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dropped() -> RedisError {
        RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionReset))
    }

    /// Tries `outcomes` in turn under the policy; how many tries it took
    /// and how it ended.
    async fn commit(
        stop: &CancellationToken,
        outcomes: &[bool],
        connection: bool,
    ) -> (usize, RedisResult<()>) {
        let mut patience = Patience::new("t", stop);
        let mut tries = 0;
        loop {
            let ok = outcomes.get(tries).copied().unwrap_or(false);
            tries += 1;
            if ok {
                return (tries, Ok(()));
            }
            let err = if connection {
                dropped()
            } else {
                RedisError::from((
                    redis::ErrorKind::Server(redis::ServerErrorKind::ResponseError),
                    "no",
                ))
            };
            if let Err(err) = patience.failed(err).await {
                return (tries, Err(err));
            }
        }
    }

    #[tokio::test]
    async fn a_commit_is_retried_through_a_lost_connection() {
        tokio::time::pause();
        let stop = CancellationToken::new();
        let (tries, result) = commit(&stop, &[false, false, false, true], true).await;
        assert!(result.is_ok());
        assert_eq!(tries, 4);
    }

    #[tokio::test]
    async fn a_refused_commit_is_not_retried() {
        let stop = CancellationToken::new();
        let (tries, result) = commit(&stop, &[false, true], false).await;
        assert!(result.is_err());
        assert_eq!(tries, 1);
    }

    #[tokio::test]
    async fn after_shutdown_a_commit_gives_up_within_its_patience() {
        tokio::time::pause();
        let stop = CancellationToken::new();
        stop.cancel();
        let started = Instant::now();
        let (_, result) = commit(&stop, &[], true).await;
        assert!(result.is_err());
        let waited = started.elapsed();
        assert!(
            waited >= SHUTDOWN_PATIENCE && waited < SHUTDOWN_PATIENCE + Duration::from_secs(6),
            "{waited:?}"
        );
    }
}
