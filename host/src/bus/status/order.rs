//! A subscriber's order per key as `status`, the console and the metrics
//! show it: parked keys, held keys and the age of the oldest held event,
//! read from its order keys with cheap reads only.

use redis::RedisResult;
use serde::Serialize;

use crate::bus::connection::RedisConn;
use crate::bus::heartbeat::OrderSetting;
use crate::bus::keys::OrderKeys;

/// Most parked keys a status names, the oldest; the rest are counted.
pub const PARKED_SHOWN: usize = 5;

/// Most characters of a key a status shows: keys come from events, which
/// anyone who can publish writes.
pub const KEY_SHOWN: usize = 200;

/// A subscriber's order per key, from its order keys
/// ([`OrderKeys`]): cheap reads only (ZCARD, the first few members).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OrderStatus {
    /// The field that holds an event's key.
    pub order_by: String,
    /// What a dead letter does to its key: `skip` or `park`.
    pub on_dead_letter: String,
    /// Keys a dead letter parked: none of their events runs until
    /// `eventhost dlq replay` or `eventhost dlq skip` releases them.
    pub parked: u64,
    /// The oldest parked keys, oldest first, at most [`PARKED_SHOWN`].
    pub oldest_parked: Vec<ParkedKey>,
    /// Keys with events waiting behind the one being handled.
    pub held: u64,
    /// Seconds since the oldest waiting event was routed; `None` when no
    /// event waits.
    pub oldest_held_s: Option<f64>,
}

/// One parked key.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ParkedKey {
    /// The key, cut to [`KEY_SHOWN`] characters (`key_cut` then says so).
    pub key: String,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub key_cut: bool,
    /// When it was parked, seconds since the epoch.
    pub parked_at: f64,
    /// Seconds since then.
    pub age_s: f64,
    /// The id of the dead letter that parked it, in the subscriber's DLQ
    /// (`None` if its holder no longer says `park:<id>`).
    pub dead_letter: Option<String>,
}

/// What the metrics of a subscriber's order show: counts and an age, no
/// key.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct OrderCounts {
    pub parked: u64,
    pub held: u64,
    pub oldest_held_s: Option<f64>,
}

/// Seconds from `ms` (a score: unix ms) to `now` (seconds), never less
/// than zero: a clock a little behind another host's is now. A score
/// Redis holds as an infinity says nothing: zero.
fn age_s(now: f64, ms: f64) -> f64 {
    let age = now - ms / 1000.0;
    if age.is_finite() {
        age.max(0.0)
    } else {
        0.0
    }
}

/// `key` as shown: at most [`KEY_SHOWN`] characters, and whether it was
/// cut.
fn shown_key(key: String) -> (String, bool) {
    match key.char_indices().nth(KEY_SHOWN) {
        Some((at, _)) => (key[..at].to_string(), true),
        None => (key, false),
    }
}

/// The parked keys as shown, from the oldest members of `parked` (member,
/// score) and the head of each one's list (`park:<dlq id>`).
fn parked_keys(
    now: f64,
    oldest: Vec<(String, f64)>,
    holders: Vec<Option<String>>,
) -> Vec<ParkedKey> {
    oldest
        .into_iter()
        .zip(holders.into_iter().chain(std::iter::repeat(None)))
        .map(|((key, ms), holder)| {
            let (key, key_cut) = shown_key(key);
            ParkedKey {
                key,
                key_cut,
                parked_at: ms / 1000.0,
                age_s: age_s(now, ms),
                dead_letter: holder.and_then(|h| h.strip_prefix("park:").map(str::to_string)),
            }
        })
        .collect()
}

/// The counts of a subscriber's order at `now` (seconds): one round trip.
pub async fn order_counts(
    conn: &mut RedisConn,
    keys: &OrderKeys,
    now: f64,
) -> RedisResult<OrderCounts> {
    let (parked, held, oldest): (u64, u64, Vec<(String, f64)>) = redis::pipe()
        .cmd("ZCARD")
        .arg(&keys.parked)
        .cmd("ZCARD")
        .arg(&keys.held)
        .cmd("ZRANGE")
        .arg(&keys.held)
        .arg(0)
        .arg(0)
        .arg("WITHSCORES")
        .query_async(conn)
        .await?;
    Ok(OrderCounts {
        parked,
        held,
        oldest_held_s: oldest.first().map(|(_, ms)| age_s(now, *ms)),
    })
}

/// A subscriber's order as `status` shows it: its counts, and its oldest
/// parked keys with the dead letter that parked each. Two round trips at
/// most, each bounded (never a scan).
pub async fn order_status(
    conn: &mut RedisConn,
    keys: &OrderKeys,
    setting: &OrderSetting,
    now: f64,
) -> RedisResult<OrderStatus> {
    let counts = order_counts(conn, keys, now).await?;
    let mut oldest_parked = Vec::new();
    if counts.parked > 0 {
        let oldest: Vec<(String, f64)> = redis::cmd("ZRANGE")
            .arg(&keys.parked)
            .arg(0)
            .arg(PARKED_SHOWN - 1)
            .arg("WITHSCORES")
            .query_async(conn)
            .await?;
        let holders: Vec<Option<String>> = if oldest.is_empty() {
            Vec::new()
        } else {
            // A parked key's list starts with `park:<dlq id>`, no payload.
            let mut heads = redis::pipe();
            for (key, _) in &oldest {
                heads.cmd("LINDEX").arg(keys.list(key)).arg(0);
            }
            heads.query_async(conn).await?
        };
        oldest_parked = parked_keys(now, oldest, holders);
    }
    Ok(OrderStatus {
        order_by: setting.by.clone(),
        on_dead_letter: setting.on_dead_letter.clone(),
        parked: counts.parked,
        oldest_parked,
        held: counts.held,
        oldest_held_s: counts.oldest_held_s,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_are_seconds_since_a_score_and_never_negative() {
        let now = 1_000_000.0;
        assert_eq!(age_s(now, 970_000_000.0), 30_000.0);
        assert_eq!(age_s(now, (now - 30.0) * 1000.0), 30.0);
        assert_eq!(
            age_s(now, (now + 2.0) * 1000.0),
            0.0,
            "a clock ahead is now"
        );
        assert_eq!(age_s(now, f64::INFINITY), 0.0);
        assert_eq!(age_s(now, f64::NEG_INFINITY), 0.0);
    }

    #[test]
    fn parked_keys_name_their_dead_letter_and_are_cut_by_characters() {
        let now = 1_000.0;
        let long = "é".repeat(KEY_SHOWN + 10);
        let keys = parked_keys(
            now,
            vec![
                ("o-1".into(), 820_000.0),
                (long.clone(), 990_000.0),
                ("o-3".into(), 999_500.0),
            ],
            vec![Some("park:1765-0".into()), Some("1766-0".into()), None],
        );
        assert_eq!(
            keys[0],
            ParkedKey {
                key: "o-1".into(),
                key_cut: false,
                parked_at: 820.0,
                age_s: 180.0,
                dead_letter: Some("1765-0".into()),
            }
        );
        assert_eq!(keys[1].key.chars().count(), KEY_SHOWN);
        assert!(keys[1].key_cut && long.starts_with(&keys[1].key));
        assert_eq!(keys[1].dead_letter, None, "a holder, not a parked one");
        assert_eq!((keys[2].age_s, keys[2].dead_letter.as_deref()), (0.5, None));
        assert_eq!(
            parked_keys(now, vec![("o-4".into(), 1.0)], Vec::new())[0].dead_letter,
            None,
            "fewer holders than keys (a key released between the reads)"
        );
    }
}
