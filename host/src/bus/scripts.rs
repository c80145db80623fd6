//! The two atomic writes of the bus, as Lua scripts, and their encoding.
//!
//! A MULTI/EXEC cannot make a write depend on whether an `XACK` found its
//! entry still pending; a script can. So both the fan-out and a subscriber's
//! commit acknowledge each entry first and write its copies, effects or dead
//! letter only if that acknowledgement counted. An entry handled twice (a
//! slow consumer and the one that reclaimed its work) is committed once.

use std::collections::HashMap;
use std::sync::LazyLock;

use redis::aio::ConnectionLike;
use redis::{RedisResult, Script};

use super::entry;
use crate::handler::Effects;

static FANOUT: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("fanout.lua")));
static COMMIT: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("commit.lua")));
static TRIM: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("trim.lua")));

/// Trims `stream` to about `keep` entries, never past an entry a consumer
/// group has not acknowledged or read; returns how many were removed.
pub async fn trim<C: ConnectionLike + Send>(
    conn: &mut C,
    stream: &str,
    keep: usize,
) -> RedisResult<u64> {
    TRIM.key(stream).arg(keep).invoke_async(conn).await
}

/// What a script call did with its records.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    /// Entries routed (fan-out) or committed with their effects.
    pub done: u64,
    /// Entries written to the DLQ.
    pub dead: u64,
    /// Entries already acknowledged by someone else: nothing written.
    pub skipped: u64,
}

impl Applied {
    fn from_reply((done, dead, skipped): (u64, u64, u64)) -> Self {
        Applied {
            done,
            dead,
            skipped,
        }
    }
}

/// One fan-out batch: for each entry of `events:all`, its copies or its
/// dead letter.
pub struct FanoutBatch {
    args: Vec<Vec<u8>>,
    entries: usize,
}

impl FanoutBatch {
    /// An empty batch for the group of `events:all`.
    pub fn new(group: &str) -> Self {
        FanoutBatch {
            args: vec![group.as_bytes().to_vec()],
            entries: 0,
        }
    }

    /// Copies `data` to the subscriber streams at `targets` (indexes into
    /// the streams given to [`FanoutBatch::apply`]); none just acknowledges.
    pub fn route(&mut self, id: &str, targets: &[usize], data: &[u8]) {
        self.args.push(id.as_bytes().to_vec());
        self.args.push(targets.len().to_string().into_bytes());
        for t in targets {
            // KEYS[1] and KEYS[2] are events:all and its DLQ; Lua counts from 1.
            self.args.push((t + 3).to_string().into_bytes());
        }
        self.args.push(data.to_vec());
        self.entries += 1;
    }

    /// Moves the entry to `events:all:dlq` as `payload`.
    pub fn dead_letter(&mut self, id: &str, payload: String) {
        self.args.push(id.as_bytes().to_vec());
        self.args.push(b"-1".to_vec());
        self.args.push(payload.into_bytes());
        self.entries += 1;
    }

    /// Number of entries in the batch.
    pub fn len(&self) -> usize {
        self.entries
    }

    /// Runs the batch as one atomic script.
    pub async fn apply<C: ConnectionLike + Send>(
        &self,
        conn: &mut C,
        all: &str,
        all_dlq: &str,
        streams: &[String],
    ) -> RedisResult<Applied> {
        let mut call = FANOUT.prepare_invoke();
        call.key(all).key(all_dlq);
        for stream in streams {
            call.key(stream);
        }
        for arg in &self.args {
            call.arg(arg.as_slice());
        }
        call.invoke_async(conn).await.map(Applied::from_reply)
    }
}

/// One commit of a subscriber: acknowledgements with their effects, and dead
/// letters.
pub struct CommitBatch {
    group: Vec<u8>,
    /// Entries handled with no effects: just their ids.
    quiet: Vec<Vec<u8>>,
    /// Everything else, encoded as commit.lua reads it.
    records: Vec<Vec<u8>>,
    entries: usize,
}

/// A count as Lua reads it.
fn count(n: usize) -> Vec<u8> {
    n.to_string().into_bytes()
}

/// Where a subscriber's commit writes.
pub struct CommitKeys<'a> {
    pub stream: &'a str,
    pub dlq: &'a str,
    pub state: &'a str,
    /// Where published events go: `events:all`.
    pub all: &'a str,
}

impl CommitBatch {
    /// An empty batch for a subscriber's `group`.
    pub fn new(group: &str) -> Self {
        CommitBatch {
            group: group.as_bytes().to_vec(),
            quiet: Vec::new(),
            records: Vec::new(),
            entries: 0,
        }
    }

    /// Acknowledges `id` and commits `effects` with it.
    pub fn ok(&mut self, id: &str, effects: &Effects, now: f64) {
        self.entries += 1;
        if effects.is_empty() {
            self.quiet.push(id.as_bytes().to_vec());
            return;
        }
        self.records.push(b"ok".to_vec());
        self.records.push(id.as_bytes().to_vec());

        let published = effects.published();
        self.records.push(count(published.len()));
        for p in published {
            self.records
                .push(entry::publish_payload(&p.data, &p.event_id, now).into_bytes());
        }

        // Only the last write of each key matters; keep the order of first
        // writes so the commit reads like the call.
        let writes = effects.writes();
        let mut last: HashMap<&str, usize> = HashMap::with_capacity(writes.len());
        for (i, (key, _)) in writes.iter().enumerate() {
            last.insert(key, i);
        }
        let mut sets = Vec::new();
        let mut deletes = Vec::new();
        for (i, (key, value)) in writes.iter().enumerate() {
            if last[key.as_str()] != i {
                continue;
            }
            match value {
                Some(value) => sets.push((key, value)),
                None => deletes.push(key),
            }
        }
        self.records.push(count(sets.len()));
        for (key, value) in sets {
            self.records.push(key.as_bytes().to_vec());
            self.records.push(value.as_bytes().to_vec());
        }
        self.records.push(count(deletes.len()));
        for key in deletes {
            self.records.push(key.as_bytes().to_vec());
        }
    }

    /// Acknowledges `id` and writes `payload` to the DLQ.
    pub fn dead_letter(&mut self, id: &str, payload: String) {
        self.records.push(b"dlq".to_vec());
        self.records.push(id.as_bytes().to_vec());
        self.records.push(payload.into_bytes());
        self.entries += 1;
    }

    /// Number of entries in the batch.
    pub fn len(&self) -> usize {
        self.entries
    }

    /// Whether the batch has no entries.
    pub fn is_empty(&self) -> bool {
        self.entries == 0
    }

    /// Runs the batch as one atomic script.
    pub async fn apply<C: ConnectionLike + Send>(
        &self,
        conn: &mut C,
        keys: &CommitKeys<'_>,
    ) -> RedisResult<Applied> {
        if self.records.is_empty() {
            // Nothing but results without effects: nothing to guard, no
            // script needed.
            let acked: u64 = redis::cmd("XACK")
                .arg(keys.stream)
                .arg(&self.group)
                .arg(&self.quiet)
                .query_async(conn)
                .await?;
            return Ok(Applied {
                done: acked,
                dead: 0,
                skipped: self.quiet.len() as u64 - acked,
            });
        }
        let mut call = COMMIT.prepare_invoke();
        call.key(keys.stream)
            .key(keys.dlq)
            .key(keys.state)
            .key(keys.all);
        let quiet = count(self.quiet.len());
        let args = [&self.group, &quiet]
            .into_iter()
            .chain(&self.quiet)
            .chain(&self.records);
        for arg in args {
            call.arg(arg.as_slice());
        }
        call.invoke_async(conn).await.map(Applied::from_reply)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(args: &[Vec<u8>]) -> Vec<String> {
        args.iter()
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect()
    }

    #[test]
    fn fanout_records_point_past_the_fixed_keys() {
        let mut batch = FanoutBatch::new("all-group");
        batch.route("1-0", &[0, 2], b"{}");
        batch.route("1-1", &[], b"{}");
        batch.dead_letter("1-2", "{\"_raw\":\"x\"}".into());
        assert_eq!(batch.len(), 3);
        assert_eq!(
            text(&batch.args),
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

    #[test]
    fn commits_keep_only_the_last_write_of_each_key() {
        let mut effects = Effects::default();
        effects.set("a".into(), "1".into());
        effects.set("b".into(), "2".into());
        effects.set("a".into(), "3".into());
        effects.delete("b".into());
        effects.delete("c".into());
        let mut batch = CommitBatch::new("g");
        batch.ok("4-0", &Effects::default(), 1.0);
        batch.ok("5-0", &effects, 1.0);
        assert_eq!(batch.len(), 2);
        assert_eq!(text(&batch.quiet), ["4-0"], "no effects: just the id");
        assert_eq!(
            text(&batch.records),
            ["ok", "5-0", "0", "1", "a", "3", "2", "b", "c"]
        );
    }

    /// Trimming against a real redis-server (a private one, in a temp dir).
    mod trim {
        use redis::aio::MultiplexedConnection;
        use redis::AsyncCommands;

        use crate::bus::private_redis::PrivateRedis;

        struct Server {
            _dir: tempfile::TempDir,
            redis: PrivateRedis,
            conn: MultiplexedConnection,
        }

        async fn server() -> Server {
            let dir = tempfile::tempdir().unwrap();
            let redis = PrivateRedis::start(dir.path()).await.unwrap();
            let client = redis::Client::open(redis.url()).unwrap();
            // Replies of 50,000 entries on a loaded machine take longer
            // than the default 500 ms.
            let config = redis::AsyncConnectionConfig::new()
                .set_response_timeout(Some(std::time::Duration::from_secs(30)));
            let conn = client
                .get_multiplexed_async_connection_with_config(&config)
                .await
                .unwrap();
            Server {
                _dir: dir,
                redis,
                conn,
            }
        }

        /// Adds `n` entries at once; returns their ids.
        async fn add(conn: &mut MultiplexedConnection, n: usize) -> Vec<String> {
            let mut pipe = redis::pipe();
            for i in 0..n {
                pipe.xadd("s", "*", &[("data", format!("{{\"n\":{i}}}"))]);
            }
            pipe.query_async(conn).await.unwrap()
        }

        /// A group `name` that has read nothing yet.
        async fn group(conn: &mut MultiplexedConnection, name: &str) {
            let () = redis::cmd("XGROUP")
                .arg(&["CREATE", "s", name, "0"])
                .query_async(conn)
                .await
                .unwrap();
        }

        /// Delivers every new entry to group `g`.
        async fn deliver(conn: &mut MultiplexedConnection) {
            let _: redis::Value = redis::cmd("XREADGROUP")
                .arg(&["GROUP", "g", "c", "STREAMS", "s", ">"])
                .query_async(conn)
                .await
                .unwrap();
        }

        /// A group `g` that has read every entry so far; it acknowledges
        /// all but `unacked`.
        async fn read_all(conn: &mut MultiplexedConnection, ids: &[String], unacked: &[&str]) {
            group(conn, "g").await;
            deliver(conn).await;
            let acked: Vec<&String> = ids
                .iter()
                .filter(|id| !unacked.contains(&id.as_str()))
                .collect();
            for chunk in acked.chunks(10_000) {
                let _: usize = conn.xack("s", "g", chunk).await.unwrap();
            }
        }

        async fn len(conn: &mut MultiplexedConnection) -> usize {
            conn.xlen("s").await.unwrap()
        }

        /// The length after one trim to `keep`.
        async fn kept_after_trim(conn: &mut MultiplexedConnection, keep: usize) -> usize {
            trim(conn, keep).await;
            len(conn).await
        }

        async fn trim(conn: &mut MultiplexedConnection, keep: usize) -> u64 {
            super::super::trim(conn, "s", keep).await.unwrap()
        }

        async fn exists(conn: &mut MultiplexedConnection, id: &str) -> bool {
            let found: Vec<(String, Vec<(String, String)>)> =
                conn.xrange("s", id, id).await.unwrap();
            !found.is_empty()
        }

        #[tokio::test]
        async fn removes_everything_over_the_limit_in_one_call() {
            // XTRIM's `~` stops at 10,000 entries unless told otherwise: a
            // busy stream would outgrow the trims.
            let mut s = server().await;
            let ids = add(&mut s.conn, 50_000).await;
            read_all(&mut s.conn, &ids, &[]).await;
            let kept = kept_after_trim(&mut s.conn, 1000).await;
            assert!((1000..=1100).contains(&kept), "kept {kept}");
            s.redis.stop().await;
        }

        #[tokio::test]
        async fn keeps_the_limit_however_bursty_the_stream() {
            // 800 entries in one go, then 200 slowly: a cut estimated from
            // the ids' times would keep a fraction of the 200.
            let mut s = server().await;
            let mut ids = add(&mut s.conn, 800).await;
            for _ in 0..200 {
                ids.extend(add(&mut s.conn, 1).await);
                tokio::time::sleep(std::time::Duration::from_millis(2)).await;
            }
            read_all(&mut s.conn, &ids, &[]).await;
            let kept = kept_after_trim(&mut s.conn, 200).await;
            assert!((200..=300).contains(&kept), "kept {kept}");
            s.redis.stop().await;
        }

        #[tokio::test]
        async fn never_cuts_what_a_group_has_not_read_or_acknowledged() {
            let mut s = server().await;
            let ids = add(&mut s.conn, 5000).await;

            // Pending near the end: the limit applies and the entry stays.
            read_all(&mut s.conn, &ids, &[&ids[4500]]).await;
            let kept = kept_after_trim(&mut s.conn, 1000).await;
            assert!((1000..=1100).contains(&kept), "kept {kept}");
            assert!(exists(&mut s.conn, &ids[4500]).await);

            // Pending far back (more than a short walk away): everything
            // from it on stays.
            let more = add(&mut s.conn, 3000).await;
            deliver(&mut s.conn).await;
            let _: usize = s.conn.xack("s", "g", &more).await.unwrap();
            trim(&mut s.conn, 1000).await;
            assert!(exists(&mut s.conn, &ids[4500]).await);
            assert!(exists(&mut s.conn, &ids[4501]).await);

            // Unread: a second group that has read nothing keeps it all.
            group(&mut s.conn, "late").await;
            let before = len(&mut s.conn).await;
            assert_eq!(trim(&mut s.conn, 10).await, 0);
            assert_eq!(len(&mut s.conn).await, before);
            s.redis.stop().await;
        }
    }
}
