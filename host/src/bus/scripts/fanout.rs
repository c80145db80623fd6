//! The fan-out's one atomic write: a batch of `events:all` routed (see
//! `fanout.lua` for what it does and why it is safe to run twice).

use std::sync::LazyLock;

use redis::{RedisResult, Script};

use super::calls::{fit_in_one_call, is_refusal, refusal_text};
use super::order::{order_args, with_order, WaitingLists};
use super::Skipped;
use crate::bus::connection::RedisConn;
#[cfg(doc)]
use crate::bus::keys::OrderKeys;

static SCRIPT: LazyLock<Script> =
    LazyLock::new(|| Script::new(&with_order(include_str!("fanout.lua"))));

/// One fan-out batch: for each entry of `events:all`, its copies or its
/// dead letter.
pub struct FanoutBatch {
    group: Vec<u8>,
    records: Vec<Record>,
    /// The waiting lists of the keys its ordered copies go to.
    waiting: WaitingLists,
}

/// Where a fan-out writes: `events:all`, its DLQ, and per subscriber its
/// stream and its order keys, by the index a target names.
pub struct FanoutKeys<'a> {
    pub all: &'a str,
    pub all_dlq: &'a str,
    pub streams: &'a [String],
    /// [`OrderKeys::held`] of each stream's subscriber.
    pub held: &'a [String],
    /// [`OrderKeys::lists`] of each stream's subscriber.
    pub lists: &'a [String],
}

/// Where one copy of an entry goes: a subscriber stream (an index into
/// [`FanoutKeys::streams`]), and for a subscriber that keeps order per
/// key, the event's key.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    pub stream: usize,
    pub key: Option<&'a str>,
}

impl Target<'_> {
    /// Copies to `streams`, none keeping order.
    pub fn unordered(streams: &[usize]) -> Vec<Target<'static>> {
        streams
            .iter()
            .map(|&stream| Target { stream, key: None })
            .collect()
    }
}

/// One entry's record: its id and its arguments to fanout.lua.
struct Record {
    id: String,
    args: Vec<Vec<u8>>,
    bytes: usize,
}

/// What a fan-out batch came to.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Routed {
    /// Entries another consumer had routed already: nothing written.
    pub skipped: Skipped,
    /// Entries whose record Redis refused on its own, for a reason that
    /// will not change (id, Redis's error): nothing written, still pending.
    pub refused: Vec<(String, String)>,
}

impl FanoutBatch {
    /// An empty batch for the group of `events:all`.
    pub fn new(group: &str) -> Self {
        FanoutBatch {
            group: group.as_bytes().to_vec(),
            records: Vec::new(),
            waiting: WaitingLists::default(),
        }
    }

    /// Copies `data` to the subscriber streams at `targets`; none just
    /// acknowledges.
    pub fn route(&mut self, id: &str, targets: &[Target<'_>], data: &[u8]) {
        let mut args = vec![id.as_bytes().to_vec()];
        args.push(targets.len().to_string().into_bytes());
        for target in targets {
            // KEYS[1] and KEYS[2] are events:all and its DLQ; Lua counts from 1.
            args.push((target.stream + 3).to_string().into_bytes());
            let place = target
                .key
                .map(|key| (self.waiting.place(target.stream, key), key));
            args.extend(order_args(place));
        }
        args.push(data.to_vec());
        self.push(id, args);
    }

    /// Moves the entry to `events:all:dlq` as `payload`.
    pub fn dead_letter(&mut self, id: &str, payload: String) {
        let args = vec![id.as_bytes().to_vec(), b"-1".to_vec(), payload.into_bytes()];
        self.push(id, args);
    }

    /// Dead-letters the entry as `payload` instead of what the batch did
    /// with it: on a cluster, an entry one of whose copies Redis refused.
    pub fn dead_letter_instead(&mut self, id: &str, payload: String) {
        if let Some(record) = self.records.iter_mut().find(|r| r.id == id) {
            record.args = vec![id.as_bytes().to_vec(), b"-1".to_vec(), payload.into_bytes()];
            record.bytes = record.args.iter().map(Vec::len).sum();
        }
    }

    fn push(&mut self, id: &str, args: Vec<Vec<u8>>) {
        let bytes = args.iter().map(Vec::len).sum();
        self.records.push(Record {
            id: id.to_string(),
            args,
            bytes,
        });
    }

    /// Number of entries in the batch.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Whether the batch has no entries.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Runs the batch: one atomic script call, or one per
    /// [`MAX_CALL_BYTES`](super::MAX_CALL_BYTES) of records. If Redis refuses it for a reason that
    /// will not change, having written nothing, it is routed in halves until
    /// each record it refuses is alone; those are returned in
    /// [`Routed::refused`].
    pub async fn apply(&self, conn: &mut RedisConn, keys: &FanoutKeys<'_>) -> RedisResult<Routed> {
        let mut routed = Routed::default();
        let mut rest: &[Record] = &self.records;
        while !rest.is_empty() {
            let take = fit_in_one_call(rest, |r| r.bytes);
            let (chunk, later) = rest.split_at(take);
            match self.call(conn, keys, chunk).await {
                Ok(skipped) => routed.skipped += skipped,
                Err(err) if is_refusal(&err) => {
                    tracing::warn!(
                        "Redis refused a fan-out of {} entries ({err}); routing them in halves \
                         to find the ones it refuses",
                        chunk.len()
                    );
                    let why = refusal_text(&err);
                    self.route_around_refusals(conn, keys, chunk, why, &mut routed)
                        .await?;
                }
                Err(err) => return Err(err),
            }
            rest = later;
        }
        Ok(routed)
    }

    /// Routes `refused`, records Redis refused together (for `why`), in
    /// halves until each one it refuses is alone, in order (no record is
    /// routed after one behind it). A few refused records among many cost
    /// about two calls per halving each, not one call per record.
    async fn route_around_refusals(
        &self,
        conn: &mut RedisConn,
        keys: &FanoutKeys<'_>,
        refused: &[Record],
        why: String,
        routed: &mut Routed,
    ) -> RedisResult<()> {
        // Parts still to try, the next one last.
        let mut parts: Vec<&[Record]> = Vec::new();
        let mut just_refused = Some((refused, why));
        loop {
            if let Some((part, why)) = just_refused.take() {
                if let [record] = part {
                    routed.refused.push((record.id.clone(), why));
                } else {
                    let (first, second) = part.split_at(part.len() / 2);
                    parts.push(second);
                    parts.push(first);
                }
            }
            let Some(part) = parts.pop() else {
                return Ok(());
            };
            match self.call(conn, keys, part).await {
                Ok(skipped) => routed.skipped += skipped,
                Err(err) if is_refusal(&err) => just_refused = Some((part, refusal_text(&err))),
                Err(err) => return Err(err),
            }
        }
    }

    async fn call(
        &self,
        conn: &mut RedisConn,
        keys: &FanoutKeys<'_>,
        records: &[Record],
    ) -> RedisResult<Skipped> {
        let mut call = SCRIPT.prepare_invoke();
        call.key(keys.all).key(keys.all_dlq);
        for key in keys.streams.iter().chain(keys.held) {
            call.key(key);
        }
        // Every list the batch names: a part of it uses fewer, harmlessly.
        if !self.waiting.is_empty() {
            let lists: Vec<&str> = keys.lists.iter().map(String::as_str).collect();
            for list in self.waiting.names(&lists) {
                call.key(list);
            }
        }
        call.arg(self.group.as_slice()).arg(keys.streams.len());
        for record in records {
            for arg in &record.args {
                call.arg(arg.as_slice());
            }
        }
        call.invoke_async(conn).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::scripts::text;

    #[test]
    fn fanout_records_point_past_the_fixed_keys() {
        let mut batch = FanoutBatch::new("all-group");
        let to = |stream| Target { stream, key: None };
        let keyed = Target {
            stream: 1,
            key: Some("o-9"),
        };
        batch.route("1-0", &[to(0), keyed, to(2)], b"{}");
        batch.route("1-1", &[], b"{}");
        batch.dead_letter("1-2", "{\"_raw\":\"x\"}".into());
        assert_eq!(batch.len(), 3);
        let lists: Vec<String> = batch.waiting.names(&["a", "b", "c"]).collect();
        assert_eq!(lists, ["b:q:o-9"]);
        let mut args = vec![batch.group.clone()];
        args.extend(batch.records.iter().flat_map(|r| r.args.clone()));
        assert_eq!(
            text(&args),
            [
                "all-group",
                "1-0",
                "3",
                "3",
                "0",
                "4",
                "1",
                "o-9",
                "5",
                "0",
                "{}",
                "1-1",
                "0",
                "{}",
                "1-2",
                "-1",
                "{\"_raw\":\"x\"}"
            ]
        );
    }
}
