//! Moving dead letters back into the stream they failed from (see
//! `replay.lua` for why each entry moves atomically), and letting the key
//! a dead letter parks move on without it (`skip.lua`).

use std::sync::LazyLock;

use redis::{RedisResult, Script};

use super::order::{order_args, with_order, WaitingLists};
use crate::bus::connection::RedisConn;
use crate::bus::keys::OrderKeys;

static SCRIPT: LazyLock<Script> =
    LazyLock::new(|| Script::new(&with_order(include_str!("replay.lua"))));
static SKIP: LazyLock<Script> =
    LazyLock::new(|| Script::new(&with_order(include_str!("skip.lua"))));

/// One dead letter moved: its id in the DLQ and its new id in the stream
/// (empty while it waits behind the holder of its key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Moved {
    pub dlq_id: String,
    pub stream_id: String,
}

/// A dead letter to replay or skip: its id, and the key it carries if its
/// subscriber keeps order per key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Letter {
    pub id: String,
    pub key: Option<String>,
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
    /// A subscriber's order keys, where letters with a key go back in
    /// their key's order.
    pub order: Option<&'a OrderKeys>,
}

/// Each letter's arguments, and the waiting lists they name.
fn letter_args(letters: &[Letter]) -> (Vec<Vec<u8>>, WaitingLists) {
    let mut waiting = WaitingLists::default();
    let mut args = Vec::with_capacity(letters.len() * 3);
    for letter in letters {
        args.push(letter.id.as_bytes().to_vec());
        let key = letter.key.as_deref();
        args.extend(order_args(key.map(|key| (waiting.place(0, key), key))));
    }
    (args, waiting)
}

/// Moves the `letters` of the DLQ into the stream, each atomically;
/// returns those moved (ids no longer in the DLQ are skipped).
pub async fn replay(
    conn: &mut RedisConn,
    keys: &ReplayKeys<'_>,
    letters: &[Letter],
) -> RedisResult<Vec<Moved>> {
    if letters.is_empty() {
        return Ok(Vec::new());
    }
    let (args, waiting) = letter_args(letters);
    let mut call = SCRIPT.prepare_invoke();
    // Unused keys repeat the stream: a script names every key it may use.
    call.key(keys.dlq)
        .key(keys.stream)
        .key(keys.requests.unwrap_or(keys.stream));
    match keys.order {
        Some(order) => {
            call.key(&order.held).key(&order.parked);
            for list in waiting.names(&[&order.lists]) {
                call.key(list);
            }
        }
        None => {
            call.key(keys.stream).key(keys.stream);
        }
    }
    call.arg(keys.dlq_group)
        .arg(if keys.requests.is_some() { "1" } else { "0" });
    for arg in args {
        call.arg(arg);
    }
    let flat: Vec<String> = call.invoke_async(conn).await?;
    Ok(pairs(flat))
}

/// Lets the keys the `letters` (of a subscriber's DLQ `dlq`, with stream
/// `stream`) park move on to their next events; the letters stay. Returns
/// the ids of those whose key moved on.
pub async fn skip(
    conn: &mut RedisConn,
    dlq: &str,
    stream: &str,
    order: &OrderKeys,
    letters: &[Letter],
) -> RedisResult<Vec<String>> {
    let letters: Vec<Letter> = letters
        .iter()
        .filter(|l| l.key.is_some())
        .cloned()
        .collect();
    if letters.is_empty() {
        return Ok(Vec::new());
    }
    let (args, waiting) = letter_args(&letters);
    let mut call = SKIP.prepare_invoke();
    call.key(dlq)
        .key(stream)
        .key(&order.held)
        .key(&order.parked);
    for list in waiting.names(&[&order.lists]) {
        call.key(list);
    }
    for arg in args {
        call.arg(arg);
    }
    call.invoke_async(conn).await
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
