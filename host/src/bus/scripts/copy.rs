//! The fan-out's write on a Redis Cluster: a batch of ingress entries
//! copied to one subscriber's stream, each event at most once within a
//! window (see `copy.lua` for why that makes a repeated copy harmless).

use std::sync::LazyLock;
use std::time::Duration;

use redis::{RedisResult, Script};

use super::calls::{fit_in_one_call, is_refusal, refusal_text};
use super::order::{order_args, with_order, WaitingLists};
use crate::bus::connection::RedisConn;
use crate::bus::keys::OrderKeys;

static SCRIPT: LazyLock<Script> =
    LazyLock::new(|| Script::new(&with_order(include_str!("copy.lua"))));

/// The copies for one subscriber: its stream, its seen set, and for each
/// entry the id it is deduplicated by and its data.
pub struct CopyBatch {
    stream: String,
    seen: String,
    /// The subscriber's order keys: the event's key is in each copy that
    /// keeps order.
    order: OrderKeys,
    waiting: WaitingLists,
    records: Vec<Copy>,
}

/// One entry to copy.
struct Copy {
    /// The ingress entry's id, to say which one Redis refused.
    entry: String,
    /// What a repeated copy is known by: the event's id.
    event: String,
    data: Vec<u8>,
    /// Its key's waiting list (by place) and its key, if it keeps order.
    order: Vec<Vec<u8>>,
}

/// What a copy batch came to.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Copied {
    /// Entries dropped: this subscriber had them already.
    pub dropped: u64,
    /// Entries copied though their event id was copied lately with other
    /// content: a producer forging or reusing ids, worth an alert.
    pub reused: u64,
    /// Entries Redis refused on their own, for a reason that will not
    /// change (ingress entry id, Redis's error): nothing written.
    pub refused: Vec<(String, String)>,
}

impl Copied {
    /// Adds one script call's `(dropped, reused)`.
    fn count(&mut self, (dropped, reused): (u64, u64)) {
        self.dropped += dropped;
        self.reused += reused;
    }
}

impl CopyBatch {
    /// An empty batch for the subscriber whose stream and seen set these
    /// are.
    pub fn new(stream: &str, seen: &str, order: &OrderKeys) -> Self {
        CopyBatch {
            stream: stream.to_string(),
            seen: seen.to_string(),
            order: order.clone(),
            waiting: WaitingLists::default(),
            records: Vec::new(),
        }
    }

    /// Copies `data`, the ingress entry `entry`, known as `event`; with
    /// `key`, in the order of that key.
    pub fn copy(&mut self, entry: &str, event: &str, data: &[u8], key: Option<&str>) {
        let place = key.map(|key| (self.waiting.place(0, key), key));
        self.records.push(Copy {
            entry: entry.to_string(),
            event: event.to_string(),
            data: data.to_vec(),
            order: order_args(place),
        });
    }

    /// The subscriber stream it writes.
    pub fn stream(&self) -> &str {
        &self.stream
    }

    /// Whether there is nothing to copy.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Runs the batch: one script call per
    /// [`MAX_CALL_BYTES`](super::MAX_CALL_BYTES) of records, each atomic. If
    /// Redis refuses a call for a reason that will not change, having
    /// written nothing, each record is tried on its own and those refused
    /// alone are returned.
    pub async fn apply(&self, conn: &mut RedisConn, window: Duration) -> RedisResult<Copied> {
        let mut copied = Copied::default();
        let mut rest: &[Copy] = &self.records;
        while !rest.is_empty() {
            let take = fit_in_one_call(rest, |r| r.data.len() + r.event.len());
            let (chunk, later) = rest.split_at(take);
            match self.call(conn, window, chunk).await {
                Ok(counts) => copied.count(counts),
                Err(err) if is_refusal(&err) => {
                    for record in chunk {
                        match self.call(conn, window, std::slice::from_ref(record)).await {
                            Ok(counts) => copied.count(counts),
                            Err(err) if is_refusal(&err) => copied
                                .refused
                                .push((record.entry.clone(), refusal_text(&err))),
                            Err(err) => return Err(err),
                        }
                    }
                }
                Err(err) => return Err(err),
            }
            rest = later;
        }
        Ok(copied)
    }

    async fn call(
        &self,
        conn: &mut RedisConn,
        window: Duration,
        records: &[Copy],
    ) -> RedisResult<(u64, u64)> {
        let mut call = SCRIPT.prepare_invoke();
        call.key(&self.stream).key(&self.seen).key(&self.order.held);
        for list in self.waiting.names(&[&self.order.lists]) {
            call.key(list);
        }
        call.arg(window.as_millis() as u64);
        for record in records {
            call.arg(record.event.as_bytes())
                .arg(record.data.as_slice());
            for arg in &record.order {
                call.arg(arg.as_slice());
            }
        }
        call.invoke_async(conn).await
    }
}
