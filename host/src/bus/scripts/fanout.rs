//! The fan-out's one atomic write: a batch of `events:all` routed (see
//! `fanout.lua` for what it does and why it is safe to run twice).

use std::sync::LazyLock;

use redis::{RedisResult, Script};

use super::Skipped;
use crate::bus::connection::RedisConn;

static SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("fanout.lua")));

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

    /// Whether the batch has no entries.
    pub fn is_empty(&self) -> bool {
        self.entries == 0
    }

    /// Runs the batch as one atomic script.
    pub async fn apply(
        &self,
        conn: &mut RedisConn,
        all: &str,
        all_dlq: &str,
        streams: &[String],
    ) -> RedisResult<Skipped> {
        let mut call = SCRIPT.prepare_invoke();
        call.key(all).key(all_dlq);
        for stream in streams {
            call.key(stream);
        }
        for arg in &self.args {
            call.arg(arg.as_slice());
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
}
