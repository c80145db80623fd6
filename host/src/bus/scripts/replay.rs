//! Moving dead letters back into the stream they failed from (see
//! `replay.lua` for why each entry moves atomically).

use std::sync::LazyLock;

use redis::{RedisResult, Script};

use crate::bus::connection::RedisConn;

static SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("replay.lua")));

/// One dead letter moved: its id in the DLQ and its new id in the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Moved {
    pub dlq_id: String,
    pub stream_id: String,
}

/// Where a replay reads and writes.
pub struct ReplayKeys<'a> {
    pub dlq: &'a str,
    /// The DLQ's consumer group, whose pending entry (if a LeanMQ reader
    /// left one) is acknowledged with the move.
    pub dlq_group: &'a str,
    /// The stream the entries go back to.
    pub stream: &'a str,
    /// A subscriber's `:http` stream, where its letters of requests never
    /// sent go back to.
    pub requests: Option<&'a str>,
}

/// Moves the entries `ids` of the DLQ into the stream, each atomically;
/// returns those moved (ids no longer in the DLQ are skipped).
pub async fn replay(
    conn: &mut RedisConn,
    keys: &ReplayKeys<'_>,
    ids: &[String],
) -> RedisResult<Vec<Moved>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let mut call = SCRIPT.prepare_invoke();
    call.key(keys.dlq).key(keys.stream);
    if let Some(requests) = keys.requests {
        call.key(requests);
    }
    call.arg(keys.dlq_group);
    for id in ids {
        call.arg(id);
    }
    let flat: Vec<String> = call.invoke_async(conn).await?;
    Ok(pairs(flat))
}

/// `[dlq id, stream id, ...]` → the moves.
fn pairs(flat: Vec<String>) -> Vec<Moved> {
    flat.chunks_exact(2)
        .map(|pair| Moved {
            dlq_id: pair[0].clone(),
            stream_id: pair[1].clone(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reply_pairs_old_and_new_ids() {
        let moved = pairs(vec!["1-0".into(), "9-0".into(), "2-0".into(), "9-1".into()]);
        assert_eq!(
            moved,
            [
                Moved {
                    dlq_id: "1-0".into(),
                    stream_id: "9-0".into()
                },
                Moved {
                    dlq_id: "2-0".into(),
                    stream_id: "9-1".into()
                }
            ]
        );
    }
}
