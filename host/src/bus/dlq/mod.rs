//! Dead-letter queues as an operator works on them: list and filter,
//! inspect one entry, replay entries into the stream they failed from,
//! purge.
//!
//! A subscriber's DLQ `events:sub:<name>:dlq` replays into
//! `events:sub:<name>` only, so the subscribers that handled the event
//! already do not see it again; the bus's DLQ `events:all:dlq` replays
//! into `events:all`, to be routed anew. Each entry moves in one script
//! ([`scripts::replay`]): a replay killed at any point has moved each
//! entry or not, so running it again finishes the job without a double.
//! What stays in a DLQ keeps LeanMQ's shape, so LeanMQ's DLQ tools keep
//! working on it.
//!
//! The rules are this module's: which entries a command takes
//! ([`Selection`]) and what it refuses ([`DlqError`]); the CLI and the
//! console only read what a person typed and say the errors their way.

use std::time::{Duration, Instant};

use serde::Serialize;

mod error;
mod letter;
mod select;
mod summary;
mod time;
mod walk;

use walk::{Ids, Scan, Walk};

pub use crate::bus::leanmq::Failure;
pub use error::DlqError;
pub(crate) use letter::id_millis;
pub use letter::{is_stream_id, json_text, DeadLetter};
pub use select::{Filter, Selection, Target};
pub use summary::{Summary, HEAD_BYTES, PREVIEW_BYTES, TAIL_BYTES};
pub use time::{millis, parse_time, time_text};

use super::connection::RedisConn;
use super::entry::StreamEntry;
use super::keys::{Keys, OrderKeys, QueueKeys};
use super::scripts::{self, Letter, Moved, PeekRange, ReplayKeys};
use error::OrUnavailable;

/// Entries read per `XRANGE` while scanning a DLQ: big enough to scan
/// 10,000 entries in a few dozen round trips, small enough that one page
/// of 1 MiB payloads stays affordable.
const PAGE: usize = 200;

/// Bytes one page of a DLQ's summaries reads from Redis, about (it ends
/// at the entry that reaches it, so at most one entry's ends more): what a
/// list costs the host whatever producers wrote. A summary weighs at most
/// [`HEAD_BYTES`] + [`TAIL_BYTES`], so a page holds 50 of the biggest
/// letters and 1000 small ones.
pub const PAGE_BUDGET: usize = 1 << 20;

/// Most entries moved by one replay script: keeps Redis free for others
/// between scripts (each entry costs it a few microseconds).
const REPLAY_CHUNK: usize = 100;

/// How fast a replay goes.
#[derive(Debug, Clone, Copy, Default)]
pub struct Pace {
    /// Entries per second at most; `None`: as fast as Redis takes them.
    pub per_second: Option<u32>,
}

/// What a replay did.
#[derive(Debug, Default, Serialize)]
pub struct ReplayReport {
    /// Entries moved back (or, on a dry run, that would be).
    pub moved: Vec<MovedLetter>,
    /// Ids asked for that are not in the DLQ (replayed or purged already).
    pub missing: Vec<String>,
    pub dry_run: bool,
    pub seconds: f64,
}

/// One entry replayed.
#[derive(Debug, Clone, Serialize)]
pub struct MovedLetter {
    pub dlq_id: String,
    /// Its id in the stream; none on a dry run.
    pub stream_id: Option<String>,
}

/// One page of a DLQ's summaries.
#[derive(Debug, Default)]
pub struct Page {
    /// The entries the filter selects, oldest first.
    pub entries: Vec<Summary>,
    /// Where the next page starts (after this id) when the count or
    /// [`PAGE_BUDGET`] ended this one before the DLQ did.
    pub next: Option<String>,
    /// Bytes read from Redis for it.
    pub bytes_read: usize,
}

/// The DLQ of one target, on one connection.
pub struct Dlq {
    conn: RedisConn,
    target: Target,
    queue: QueueKeys,
    /// A subscriber's `:http` stream: where letters of requests go back.
    requests: Option<String>,
    /// A subscriber's order keys: where letters with a key go back in
    /// their key's order, and what `skip` releases.
    order: Option<OrderKeys>,
}

impl Dlq {
    /// `target`'s DLQ under `keys`; refused if these commands cannot
    /// reach it (the bus's, on a Redis Cluster).
    pub fn new(conn: RedisConn, keys: &Keys, target: Target) -> Result<Self, DlqError> {
        target.reachable(keys)?;
        let queue = target.queue(keys);
        let (requests, order) = match &target {
            Target::Bus => (None, None),
            Target::Subscriber(name) => (Some(keys.requests(name).stream), Some(keys.order(name))),
        };
        Ok(Dlq {
            conn,
            target,
            queue,
            requests,
            order,
        })
    }

    /// The DLQ's key, the stream it replays into, their groups.
    pub fn queue(&self) -> &QueueKeys {
        &self.queue
    }

    /// Whose DLQ it is.
    pub fn target(&self) -> &Target {
        &self.target
    }

    /// Entries in the DLQ.
    pub async fn depth(&mut self) -> Result<u64, DlqError> {
        redis::cmd("XLEN")
            .arg(&self.queue.dlq)
            .query_async(&mut self.conn)
            .await
            .or_unavailable(|| format!("cannot read the length of {}", self.queue.dlq))
    }

    /// Refuses a replay unless the stream it replays into has its
    /// consumer group, i.e. a host has set this subscriber up at least
    /// once: replayed entries would otherwise wait in a stream nobody reads.
    async fn ensure_reader(&mut self) -> Result<(), DlqError> {
        let queue = &self.queue;
        let info = super::group::group_info(&mut self.conn, &queue.stream, &queue.group)
            .await
            .or_unavailable(|| format!("cannot read the groups of {}", queue.stream))?;
        if info.is_none() {
            return Err(DlqError::Conflict(format!(
                "{} has no consumer group {}: no host has run {} yet, so nothing would handle \
                 what is replayed; add it to the config and start `eventhost run` first",
                queue.stream, queue.group, self.target
            )));
        }
        Ok(())
    }

    /// Up to `limit` entries the filter selects, oldest first.
    pub async fn list(
        &mut self,
        filter: &Filter,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, DlqError> {
        let mut scan = Scan::start(self, filter).await?;
        let mut found = Vec::new();
        while found.len() < limit {
            let Some(page) = scan.next_page(self).await? else {
                break;
            };
            found.extend(page.into_iter().take(limit - found.len()));
        }
        Ok(found)
    }

    /// Up to `limit` summaries the filter selects, oldest first, starting
    /// after the entry `after` (or at the filter's `since`), reading at
    /// most about [`PAGE_BUDGET`] bytes from Redis and never a whole
    /// payload (one script per page of [`PAGE`] entries). What a summary
    /// does not know (a big letter's failures past its end read) does not
    /// match a filter on it.
    pub async fn summaries(
        &mut self,
        filter: &Filter,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Page, DlqError> {
        if let Some(after) = after {
            select::entry_id(after)?;
        }
        let mut page = Page::default();
        let from = match (after, filter.since_ms) {
            (Some(after), _) => format!("({after}"),
            (None, since) => Walk::from_since(since),
        };
        let mut walk = Walk::start(from);
        while !walk.over() {
            let budget = PAGE_BUDGET.saturating_sub(page.bytes_read);
            let (summaries, bytes) = walk.next(self, budget).await?;
            page.bytes_read += bytes;
            let last = summaries.last().map(|s| s.id.clone());
            let count = summaries.len();
            for (i, summary) in summaries.into_iter().enumerate() {
                if filter.decides(&summary) != Some(true) {
                    continue;
                }
                let id = summary.id.clone();
                page.entries.push(summary);
                if page.entries.len() == limit {
                    page.next = (i + 1 < count || !walk.over()).then_some(id);
                    return Ok(page);
                }
            }
            if page.bytes_read >= PAGE_BUDGET && !walk.over() {
                page.next = last;
                break;
            }
        }
        tracing::debug!(
            dlq = %self.queue.dlq,
            entries = page.entries.len(),
            bytes = page.bytes_read,
            "summaries read"
        );
        Ok(page)
    }

    /// One entry as stored; `None` if it is not in the DLQ.
    pub async fn entry(&mut self, id: &str) -> Result<Option<StreamEntry>, DlqError> {
        select::entry_id(id)?;
        Ok(self.range(id, id, 1).await?.into_iter().next())
    }

    /// One entry; `None` if it is not in the DLQ.
    pub async fn get(&mut self, id: &str) -> Result<Option<DeadLetter>, DlqError> {
        select::entry_id(id)?;
        let entries = self.range(id, id, 1).await?;
        Ok(entries.first().map(DeadLetter::from_entry))
    }

    /// Moves the selected entries back into the stream they failed from,
    /// each atomically, at most `pace` per second; with `dry_run`, only
    /// says which. `progress` hears the running total after each step.
    /// Refused when nothing reads that stream.
    pub async fn replay(
        &mut self,
        selection: &Selection,
        pace: Pace,
        dry_run: bool,
        progress: impl FnMut(usize),
    ) -> Result<ReplayReport, DlqError> {
        self.ensure_reader().await?;
        self.walk(selection, pace, dry_run, progress).await
    }

    /// How many entries `selection` takes now: what a purge would delete.
    pub async fn count(&mut self, selection: &Selection) -> Result<usize, DlqError> {
        let report = self.walk(selection, Pace::default(), true, |_| {}).await?;
        Ok(report.moved.len())
    }

    /// Works through the selected entries: replays them, or on a
    /// `dry_run` only lists them.
    async fn walk(
        &mut self,
        selection: &Selection,
        pace: Pace,
        dry_run: bool,
        mut progress: impl FnMut(usize),
    ) -> Result<ReplayReport, DlqError> {
        let started = Instant::now();
        let mut report = ReplayReport {
            dry_run,
            ..ReplayReport::default()
        };
        let chunk = match pace.per_second {
            // About 20 steps a second, so the pace holds within a second.
            Some(rate) => (rate as usize / 20).clamp(1, REPLAY_CHUNK),
            None => REPLAY_CHUNK,
        };
        let mut ids = Ids::of(selection);
        loop {
            let batch = ids.next(self).await?;
            if batch.is_empty() {
                break;
            }
            for step in batch.chunks(chunk) {
                if dry_run {
                    report.moved.extend(step.iter().map(|id| MovedLetter {
                        dlq_id: id.clone(),
                        stream_id: None,
                    }));
                } else {
                    let moved = self.move_back(step).await?;
                    if moved.len() < step.len() && matches!(selection, Selection::Ids(_)) {
                        let gone = step
                            .iter()
                            .filter(|id| !moved.iter().any(|m| &m.dlq_id == *id));
                        ids.missing.extend(gone.cloned());
                    }
                    report.moved.extend(moved.into_iter().map(|m| MovedLetter {
                        dlq_id: m.dlq_id,
                        stream_id: Some(m.stream_id),
                    }));
                    progress(report.moved.len());
                }
                if let Some(rate) = pace.per_second {
                    let due = Duration::from_secs_f64(report.moved.len() as f64 / f64::from(rate));
                    tokio::time::sleep_until((started + due).into()).await;
                }
            }
        }
        report.missing = ids.missing;
        report.seconds = started.elapsed().as_secs_f64();
        Ok(report)
    }

    /// Deletes the selected entries for good; returns how many were. A
    /// letter that parks its key lets the key move on first, as `skip`
    /// does: a key is never left parked on a letter that is gone.
    pub async fn purge(&mut self, selection: &Selection) -> Result<u64, DlqError> {
        let mut ids = Ids::of(selection);
        let mut deleted = 0;
        loop {
            let batch = ids.next(self).await?;
            if batch.is_empty() {
                break;
            }
            if self.order.is_some() {
                self.skip(&batch).await?;
            }
            // XDEL and XACK together, so a LeanMQ reader keeps no pending
            // entry for what no longer exists.
            let (removed, _): (u64, u64) = redis::pipe()
                .atomic()
                .cmd("XDEL")
                .arg(&self.queue.dlq)
                .arg(&batch)
                .cmd("XACK")
                .arg(&self.queue.dlq)
                .arg(&self.queue.dlq_group)
                .arg(&batch)
                .query_async(&mut self.conn)
                .await
                .or_else(|err| {
                    // No DLQ group (LeanMQ never opened it): delete only.
                    if err.code() == Some("NOGROUP") {
                        Ok((0, 0))
                    } else {
                        Err(err)
                    }
                })
                .or_unavailable(|| format!("cannot delete from {}", self.queue.dlq))?;
            deleted += removed;
            for id in &batch {
                tracing::debug!(dlq = %self.queue.dlq, dlq_id = %id, "purged");
            }
        }
        Ok(deleted)
    }

    /// Lets the keys the letters `ids` park move on to their next events
    /// (a subscriber with `order_by` and `on_dead_letter = "park"`); the
    /// letters stay in the DLQ. Returns the ids whose key moved on; the
    /// others did not park a key (any more).
    pub async fn skip(&mut self, ids: &[String]) -> Result<Vec<String>, DlqError> {
        for id in ids {
            select::entry_id(id)?;
        }
        let Some(order) = self.order.clone() else {
            return Err(DlqError::Conflict(
                "the bus's dead letters hold no key: only a subscriber's (with order_by) can be skipped"
                    .into(),
            ));
        };
        let letters = self.letters(ids).await?;
        let released = scripts::skip(
            &mut self.conn,
            &self.queue.dlq,
            &self.queue.stream,
            &order,
            &letters,
        )
        .await
        .or_unavailable(|| format!("cannot release the keys of {}", self.queue.dlq))?;
        for id in &released {
            tracing::info!(dlq = %self.queue.dlq, dlq_id = %id, "skipped: its key moves on");
        }
        Ok(released)
    }

    /// `ids` with the key each letter carries (a subscriber's, with
    /// `order_by`): read in one round trip.
    async fn letters(&mut self, ids: &[String]) -> Result<Vec<Letter>, DlqError> {
        if self.order.is_none() {
            return Ok(ids
                .iter()
                .map(|id| Letter {
                    id: id.clone(),
                    key: None,
                })
                .collect());
        }
        let mut pipe = redis::pipe();
        for id in ids {
            pipe.cmd("XRANGE").arg(&self.queue.dlq).arg(id).arg(id);
        }
        let found: Vec<Vec<StreamEntry>> = pipe
            .query_async(&mut self.conn)
            .await
            .or_unavailable(|| format!("cannot read {}", self.queue.dlq))?;
        Ok(ids
            .iter()
            .zip(found)
            .map(|(id, entries)| Letter {
                id: id.clone(),
                key: entries.first().and_then(|e| e.key()).map(str::to_string),
            })
            .collect())
    }

    async fn move_back(&mut self, ids: &[String]) -> Result<Vec<Moved>, DlqError> {
        let letters = self.letters(ids).await?;
        let keys = ReplayKeys {
            dlq: &self.queue.dlq,
            dlq_group: &self.queue.dlq_group,
            stream: &self.queue.stream,
            requests: self.requests.as_deref(),
            order: self.order.as_ref(),
        };
        let moved = scripts::replay(&mut self.conn, &keys, &letters)
            .await
            .or_unavailable(|| {
                format!(
                    "cannot replay {} into {}",
                    self.queue.dlq, self.queue.stream
                )
            })?;
        for m in &moved {
            tracing::debug!(dlq = %self.queue.dlq, dlq_id = %m.dlq_id, stream_id = %m.stream_id, "replayed");
        }
        Ok(moved)
    }

    async fn range(
        &mut self,
        from: &str,
        to: &str,
        count: usize,
    ) -> Result<Vec<StreamEntry>, DlqError> {
        redis::cmd("XRANGE")
            .arg(&self.queue.dlq)
            .arg(from)
            .arg(to)
            .arg("COUNT")
            .arg(count)
            .query_async(&mut self.conn)
            .await
            .or_unavailable(|| format!("cannot read {}", self.queue.dlq))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;
    use std::time::UNIX_EPOCH;

    fn entry(id: &str, data: &str) -> StreamEntry {
        StreamEntry {
            id: id.into(),
            fields: vec![(b"data".to_vec(), data.as_bytes().to_vec())],
        }
    }

    #[test]
    fn a_dead_letter_reads_its_failures_and_its_time() {
        let letter = DeadLetter::from_entry(&entry(
            "1764557000123-0",
            r#"{"event_type":"Ping","event_id":"e-1","n":1,
                "_failures":[{"timestamp":1.5,"reason":"old"},
                             {"timestamp":2.5,"reason":"pay: trap: boom","kind":"trap","subscriber":"pay","attempt":1}],
                "_metadata":{"id":"e-1","timestamp":2.5,"ttl":null}}"#,
        ));
        assert_eq!(letter.dead_lettered_ms, 1_764_557_000_123);
        assert_eq!(letter.event_type.as_deref(), Some("Ping"));
        assert_eq!(letter.event_id.as_deref(), Some("e-1"));
        assert_eq!(letter.failures.len(), 2);
        assert_eq!(letter.failures[0].kind, None, "LeanMQ writes no kind");
        assert_eq!(letter.kind(), Some("trap"));
        assert_eq!(letter.last_failure().unwrap().attempt, Some(1));
        assert_eq!(
            letter.payload(),
            serde_json::json!({"event_type":"Ping","event_id":"e-1","n":1})
        );
    }

    #[test]
    fn an_entry_as_text_is_its_json_whatever_its_shape() {
        for data in [
            r#"{"event_type":"Ping","event_id":"e-1","n":[1,2],"_failures":[{"timestamp":2.5,"reason":"r","kind":"trap","attempt":1}],"_metadata":{"id":"e-1","timestamp":2.5,"ttl":null}}"#,
            r#"{"_raw":"\u0001"}"#,
            "not json",
            "[1,2]",
        ] {
            let e = entry("1764557000123-0", data);
            let text: Value = serde_json::from_str(&json_text(&e)).unwrap();
            assert_eq!(text, DeadLetter::from_entry(&e).to_json(), "{data}");
        }
    }

    #[test]
    fn what_is_not_json_is_kept_as_text() {
        let letter = DeadLetter::from_entry(&entry("5-0", "not json"));
        assert_eq!(letter.data, Value::String("not json".into()));
        assert_eq!(letter.kind(), None);
        assert!(letter.failures.is_empty());
    }

    #[test]
    fn filters_select_by_kind_type_and_time() {
        let letter = DeadLetter::from_entry(&entry(
            "2000-0",
            r#"{"event_type":"Ping","_failures":[{"reason":"r","kind":"reject"}]}"#,
        ));
        assert!(Filter::default().matches(&letter));
        let kind = |k: &str| Filter {
            kind: Some(k.into()),
            ..Filter::default()
        };
        assert!(kind("reject").matches(&letter));
        assert!(!kind("trap").matches(&letter));
        let event_type = |t: &str| Filter {
            event_type: Some(t.into()),
            ..Filter::default()
        };
        assert!(event_type("Ping").matches(&letter));
        assert!(!event_type("Pong").matches(&letter));
        let since = |ms| Filter {
            since_ms: Some(ms),
            ..Filter::default()
        };
        assert!(since(2000).matches(&letter));
        assert!(!since(2001).matches(&letter));
        assert!(!since(2001).is_empty());
        assert!(Filter::default().is_empty());
    }

    #[test]
    fn stream_ids_are_checked_before_they_reach_redis() {
        assert!(is_stream_id("1764557000123-0"));
        assert!(!is_stream_id("1764557000123"));
        assert!(!is_stream_id("-"));
        assert!(!is_stream_id("1-x"));
        assert!(!is_stream_id("e-1"));
    }

    #[test]
    fn times_are_durations_ago_utc_times_or_epoch_seconds() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000_000);
        assert_eq!(
            parse_time("15m", now).unwrap(),
            now - Duration::from_secs(900)
        );
        assert_eq!(
            parse_time("1d", now).unwrap(),
            now - Duration::from_secs(86_400)
        );
        assert_eq!(
            parse_time("2026-12-01T02:00:00Z", now).unwrap(),
            UNIX_EPOCH + Duration::from_secs(1_796_090_400)
        );
        assert_eq!(
            parse_time("1796090400", now).unwrap(),
            UNIX_EPOCH + Duration::from_secs(1_796_090_400)
        );
        let err = parse_time("yesterday", now).unwrap_err().to_string();
        assert!(err.contains("15m"), "{err}");
    }
}
