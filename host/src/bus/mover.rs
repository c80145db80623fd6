//! Moves due work from schedules into their streams: a subscriber's
//! retries, and the events published for later (`scripts/later.lua`).
//!
//! Every host moves every schedule it knows; the move of each entry is one
//! script (added to the stream, removed from the schedule), so two hosts
//! moving at once neither lose nor double one, and a host that dies
//! leaves the rest to the others. Nothing of what waits is in a host.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::connection::RedisConn;
use super::scripts::later::{move_due, schedule_of};
use crate::backoff::Backoff;

/// The longest a due entry waits for a mover to look: what new entries
/// (due sooner than anything seen) may wait past their time.
pub const TICK: Duration = Duration::from_millis(25);

/// Most entries moved per script call: Redis serves no one else while a
/// script runs.
const BATCH: usize = 500;

/// The mover of some schedules, each into its stream.
pub struct Mover {
    /// For logs: what it moves for.
    who: String,
    /// (schedule, stream) pairs.
    streams: Vec<(String, String)>,
    conn: RedisConn,
    stop: CancellationToken,
}

impl Mover {
    /// A mover of the schedule of each of `streams` into it, for `who`
    /// (logs), until `stop`.
    pub fn new(who: &str, streams: &[String], conn: RedisConn, stop: CancellationToken) -> Self {
        Mover {
            who: who.to_string(),
            streams: streams
                .iter()
                .map(|stream| (schedule_of(stream), stream.clone()))
                .collect(),
            conn,
            stop,
        }
    }

    /// Moves what is due, each time something is or every [`TICK`], until
    /// stopped.
    pub async fn run(mut self) {
        let mut backoff = Backoff::default();
        loop {
            let wait = match self.move_all().await {
                Ok(next) => {
                    backoff.reset();
                    next
                }
                Err(err) => {
                    tracing::warn!(
                        "{}: cannot move due retries and delayed events ({err}); trying again in {:?}",
                        self.who,
                        backoff.peek()
                    );
                    if !backoff.wait(&self.stop).await {
                        return;
                    }
                    continue;
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.stop.cancelled() => return,
            }
        }
    }

    /// One round over the schedules; how long until the next look.
    async fn move_all(&mut self) -> redis::RedisResult<Duration> {
        let mut wait = TICK;
        for (schedule, stream) in &self.streams {
            loop {
                let report = move_due(&mut self.conn, schedule, stream, BATCH).await?;
                if report.moved > 0 {
                    tracing::debug!(stream = %stream, moved = report.moved, "moved due entries");
                }
                if report.moved < BATCH {
                    if let Some(next) = report.next_due {
                        wait = wait.min(next.max(Duration::from_millis(1)));
                    }
                    break;
                }
            }
        }
        Ok(wait)
    }
}
