//! The sender of a subscriber's requests queued with `send-after-commit`.
//!
//! A commit writes each queued request to `events:sub:<name>:http` (in
//! the subscriber's slot on a cluster) atomically with the acknowledgement
//! of its event, so a request exists exactly when its event is committed.
//! This loop reads that stream in a consumer group (so any host sends, and
//! what a dead host held is reclaimed after `claim_idle`), has each entry
//! sent by the subscriber's [`RequestSender`] (HTTP is not this module's
//! business), with backoff between attempts, and then acknowledges and
//! deletes it; one that never succeeds goes to the subscriber's DLQ, in
//! LeanMQ's shape, with the reason the last send gave. Every send of a
//! request carries the same `Idempotency-Key`, so a request sent twice (a
//! host killed after the send, before the acknowledgement; a reclaim) is
//! one request to a receiver that honours it.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt as _;
use redis::RedisResult;
use tokio_util::sync::CancellationToken;

use super::entry::StreamEntry;
use super::group::GroupConsumer;
use super::leanmq::DeadLetterer;
use super::subscriber::Subscription;
use super::worker::{self, Patience, Round, Worker};
use super::BLOCK;
use crate::config::BusConfig;
use crate::handler::{retry_delay, Delivery, QueuedRequest, MAX_ATTEMPTS};
use crate::telemetry::metrics;

/// The `kind` of a dead letter of a request that was never sent.
pub const HTTP_KIND: &str = "http";
/// The field that marks a dead letter as a queued request, so `dlq replay`
/// puts it back in the `:http` stream instead of the subscriber's.
pub const LETTER_FIELD: &str = "after_commit";
/// Requests of one subscriber sent at once by this host.
const SENDS_AT_ONCE: usize = 16;

/// The sender of one subscriber's queued requests in this process.
pub struct Sender {
    /// `sender <subscriber>`, for logs.
    name: String,
    subscription: Arc<Subscription>,
    group: GroupConsumer,
    bus: BusConfig,
    stop: CancellationToken,
}

/// What came of one entry.
enum Done {
    /// A response under 400, or a dead letter to write (its payload).
    Sent,
    DeadLetter(String),
}

impl Sender {
    /// A sender reading a subscriber's `:http` stream through `group`,
    /// until `stop` fires (what it holds then stays pending).
    pub(super) fn new(
        subscription: Arc<Subscription>,
        group: GroupConsumer,
        bus: BusConfig,
        stop: CancellationToken,
    ) -> Self {
        Sender {
            name: format!("sender {}", subscription.name),
            subscription,
            group,
            bus,
            stop,
        }
    }

    /// Sends until stopped; Redis errors are retried with backoff.
    pub async fn run(self) {
        tracing::debug!(stream = %self.group.queue().stream, "after-commit sender started");
        let stop = self.stop.clone();
        worker::run(self, stop).await;
    }

    /// Sends `entry`'s request up to its attempts; `None` if stopped first
    /// (it stays pending).
    async fn deliver(&self, entry: &StreamEntry) -> Option<Done> {
        let subscriber = self.subscription.name.as_str();
        // The entry is read back from Redis, where anyone with access may
        // have written it: bounded as a commit writes it, before parsing,
        // and its attempts clamped, so no entry is retried without end.
        let limit = self.bus.max_payload_bytes;
        let parsed = entry
            .data()
            .ok_or_else(|| "an entry without data".to_string())
            .and_then(|data| match data.len() {
                n if n > limit => Err(format!("an entry of {n} bytes, over {limit}")),
                _ => serde_json::from_slice::<QueuedRequest>(data)
                    .map_err(|err| format!("not a queued request: {err}")),
            });
        let mut request = match parsed {
            Ok(request) => request,
            Err(why) => return Some(self.dead_letter(entry, &why, 1)),
        };
        request.attempts = request.attempts.clamp(1, MAX_ATTEMPTS);
        let mut attempt = 1;
        loop {
            let delivery = match self.subscription.handler().request_sender() {
                Some(sender) => {
                    tokio::select! {
                        delivery = sender.send(&request) => delivery,
                        () = self.stop.cancelled() => return None,
                    }
                }
                None => Delivery::Retry("its handler cannot send requests".into()),
            };
            match delivery {
                Delivery::Sent { status } => {
                    tracing::debug!(subscriber, event_id = %request.event_id, key = %request.key, status, attempt, "after-commit request sent");
                    metrics::after_commit(subscriber, "sent");
                    return Some(Done::Sent);
                }
                Delivery::Retry(why) if attempt < request.attempts => {
                    tracing::info!(subscriber, event_id = %request.event_id, key = %request.key, attempt, "after-commit request failed ({why}); trying again");
                    metrics::after_commit(subscriber, "retried");
                    tokio::select! {
                        () = tokio::time::sleep(retry_delay(attempt)) => {}
                        () = self.stop.cancelled() => return None,
                    }
                    attempt += 1;
                }
                Delivery::Retry(why) | Delivery::Fail(why) => {
                    let reason = format!(
                        "{subscriber}: {} {} not sent after {attempt} attempts: {why}",
                        request.method, request.url
                    );
                    tracing::warn!(subscriber, event_id = %request.event_id, key = %request.key, "{reason}; dead-lettered");
                    return Some(self.dead_letter(entry, &reason, attempt));
                }
            }
        }
    }

    fn dead_letter(&self, entry: &StreamEntry, reason: &str, attempt: u32) -> Done {
        metrics::after_commit(&self.subscription.name, "dead_lettered");
        let letters = DeadLetterer::subscriber(&self.subscription.name, self.bus.max_payload_bytes);
        let now = crate::handler::unix_now();
        Done::DeadLetter(letters.letter(entry, HTTP_KIND, reason, attempt, now))
    }

    /// Sends a batch at once, keeping its entries ours while the sends
    /// take (a receiver that is down makes them wait for minutes).
    async fn send_all(&self, entries: &[StreamEntry]) -> Vec<Option<Done>> {
        let ids: Vec<String> = entries.iter().map(|e| e.id.clone()).collect();
        // Boxed: a closure over the entries is not `Send` for every
        // lifetime the async trait asks of it.
        let deliveries: Vec<futures_util::future::BoxFuture<'_, Option<Done>>> = entries
            .iter()
            .map(|entry| Box::pin(self.deliver(entry)) as _)
            .collect();
        let sends = futures_util::stream::iter(deliveries)
            .buffered(SENDS_AT_ONCE)
            .collect::<Vec<_>>();
        tokio::pin!(sends);
        let every = (self.bus.claim_idle / 3).max(Duration::from_millis(100));
        loop {
            tokio::select! {
                done = &mut sends => return done,
                () = tokio::time::sleep(every) => {
                    if let Err(err) = self.group.renew(&ids).await {
                        tracing::debug!(subscriber = %self.subscription.name, "cannot renew what it sends: {err}");
                    }
                }
            }
        }
    }

    /// Acknowledges and deletes what was sent, and moves to the DLQ what
    /// never will be, each in one transaction (the keys share a slot).
    async fn settle(
        &mut self,
        entries: &[StreamEntry],
        done: Vec<Option<Done>>,
    ) -> RedisResult<()> {
        let queue = self.group.queue().clone();
        let mut pipe = redis::pipe();
        pipe.atomic();
        let mut any = false;
        for (entry, done) in entries.iter().zip(done) {
            match done {
                None => continue,
                Some(Done::Sent) => {}
                Some(Done::DeadLetter(payload)) => {
                    pipe.cmd("XADD")
                        .arg(&queue.dlq)
                        .arg("*")
                        .arg("data")
                        .arg(payload)
                        .arg(LETTER_FIELD)
                        .arg(HTTP_KIND)
                        .ignore();
                }
            }
            pipe.cmd("XACK")
                .arg(&queue.stream)
                .arg(&queue.group)
                .arg(&entry.id)
                .ignore()
                .cmd("XDEL")
                .arg(&queue.stream)
                .arg(&entry.id)
                .ignore();
            any = true;
        }
        if !any {
            return Ok(());
        }
        let stop = self.stop.clone();
        let mut patience = Patience::new(&self.name, &stop);
        loop {
            match pipe.query_async::<()>(self.group.commands()).await {
                Ok(()) => return Ok(()),
                Err(err) => patience.failed(err).await?,
            }
        }
    }
}

#[async_trait]
impl Worker for Sender {
    fn name(&self) -> &str {
        &self.name
    }

    fn group(&mut self) -> &mut GroupConsumer {
        &mut self.group
    }

    async fn step(&mut self, stopping: bool) -> RedisResult<Round> {
        if stopping {
            // What is not sent stays in the stream, for the next start.
            return Ok(Round::Done);
        }
        let mut entries: Vec<StreamEntry> = self
            .group
            .reclaim_due(self.bus.claim_idle, self.bus.read_batch)
            .await?
            .into_iter()
            .map(|c| c.entry)
            .collect();
        if entries.is_empty() {
            let block = BLOCK
                .min(self.group.until_reclaim())
                .max(Duration::from_millis(1));
            entries = self
                .group
                .read_new(self.bus.read_batch, Some(block))
                .await?;
        }
        if entries.is_empty() {
            return Ok(Round::Continue);
        }
        super::crash::here(super::crash::Point::SenderAfterRead);
        let done = self.send_all(&entries).await;
        self.settle(&entries, done).await?;
        Ok(Round::Continue)
    }
}
