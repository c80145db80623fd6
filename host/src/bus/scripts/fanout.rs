//! The fan-out's one atomic write: a batch of `events:all` routed (see
//! `fanout.lua` for what it does and why it is safe to run twice).

use std::sync::LazyLock;

use redis::{RedisResult, Script};

use super::commit::{fit_in_one_call, is_refusal, refusal_text};
use super::Skipped;
use crate::bus::connection::RedisConn;

static SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("fanout.lua")));

/// One fan-out batch: for each entry of `events:all`, its copies or its
/// dead letter.
pub struct FanoutBatch {
    group: Vec<u8>,
    records: Vec<Record>,
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
        }
    }

    /// Copies `data` to the subscriber streams at `targets` (indexes into
    /// the streams given to [`FanoutBatch::apply`]); none just acknowledges.
    pub fn route(&mut self, id: &str, targets: &[usize], data: &[u8]) {
        let mut args = vec![id.as_bytes().to_vec()];
        args.push(targets.len().to_string().into_bytes());
        for t in targets {
            // KEYS[1] and KEYS[2] are events:all and its DLQ; Lua counts from 1.
            args.push((t + 3).to_string().into_bytes());
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
    pub async fn apply(
        &self,
        conn: &mut RedisConn,
        all: &str,
        all_dlq: &str,
        streams: &[String],
    ) -> RedisResult<Routed> {
        let mut routed = Routed::default();
        let mut rest: &[Record] = &self.records;
        while !rest.is_empty() {
            let take = fit_in_one_call(rest, |r| r.bytes);
            let (chunk, later) = rest.split_at(take);
            match self.call(conn, all, all_dlq, streams, chunk).await {
                Ok(skipped) => routed.skipped += skipped,
                Err(err) if is_refusal(&err) => {
                    tracing::warn!(
                        "Redis refused a fan-out of {} entries ({err}); routing them in halves \
                         to find the ones it refuses",
                        chunk.len()
                    );
                    let why = refusal_text(&err);
                    self.route_around_refusals(
                        conn,
                        all,
                        all_dlq,
                        streams,
                        chunk,
                        why,
                        &mut routed,
                    )
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
    #[allow(clippy::too_many_arguments)]
    async fn route_around_refusals(
        &self,
        conn: &mut RedisConn,
        all: &str,
        all_dlq: &str,
        streams: &[String],
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
            match self.call(conn, all, all_dlq, streams, part).await {
                Ok(skipped) => routed.skipped += skipped,
                Err(err) if is_refusal(&err) => just_refused = Some((part, refusal_text(&err))),
                Err(err) => return Err(err),
            }
        }
    }

    async fn call(
        &self,
        conn: &mut RedisConn,
        all: &str,
        all_dlq: &str,
        streams: &[String],
        records: &[Record],
    ) -> RedisResult<Skipped> {
        let mut call = SCRIPT.prepare_invoke();
        call.key(all).key(all_dlq);
        for stream in streams {
            call.key(stream);
        }
        call.arg(self.group.as_slice());
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
        batch.route("1-0", &[0, 2], b"{}");
        batch.route("1-1", &[], b"{}");
        batch.dead_letter("1-2", "{\"_raw\":\"x\"}".into());
        assert_eq!(batch.len(), 3);
        let mut args = vec![batch.group.clone()];
        args.extend(batch.records.iter().flat_map(|r| r.args.clone()));
        assert_eq!(
            text(&args),
            [
                "all-group",
                "1-0",
                "2",
                "3",
                "5",
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
