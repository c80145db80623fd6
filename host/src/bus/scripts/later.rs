//! Work for later: a stream's schedule (see `later.lua`), what is due
//! moved to the stream (`move.lua`), and an event published for later.

use std::sync::LazyLock;
use std::time::Duration;

use redis::{RedisResult, Script};

use crate::bus::connection::RedisConn;
use crate::handler::Due;

static MOVE: LazyLock<Script> =
    LazyLock::new(|| Script::new(&with_later(include_str!("move.lua"))));

/// KEYS[1] a schedule; ARGV when (`Due::spec`), tag, payload.
static PUBLISH: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&with_later(
        "#!lua\n\
         local due = later_due(ARGV[1], later_now())\n\
         if not due then return redis.error_reply('ERR publish: malformed time') end\n\
         later_add(KEYS[1], due, {ARGV[2], 'data', ARGV[3]})\n\
         return due\n",
    ))
});

/// `script` with the functions of `later.lua` in front of it (after its
/// `#!lua` line, which must stay first).
pub(super) fn with_later(script: &str) -> String {
    let later = include_str!("later.lua");
    match script.strip_prefix("#!lua\n") {
        Some(body) => format!("#!lua\n{later}\n{body}"),
        None => format!("{later}\n{script}"),
    }
}

/// The schedule of `stream`: `<stream>:schedule`, in its hash slot.
pub fn schedule_of(stream: &str) -> String {
    format!("{stream}:schedule")
}

/// `due` as `later.lua` reads it: `d<ms>` or `a<ms>`.
pub fn due_spec(due: Due) -> String {
    match due {
        Due::After(delay) => format!("d{}", delay.as_millis()),
        Due::At(ms) => format!("a{ms}"),
    }
}

/// What one call of the mover did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MoveReport {
    /// Entries added to the stream.
    pub moved: usize,
    /// How long until the next entry left is due; `None`: none left.
    pub next_due: Option<Duration>,
}

/// Moves up to `limit` due entries of `schedule` into `stream`, each in
/// the same atomic step that removes it from the schedule.
pub async fn move_due(
    conn: &mut RedisConn,
    schedule: &str,
    stream: &str,
    limit: usize,
) -> RedisResult<MoveReport> {
    let (moved, next): (usize, i64) = MOVE
        .key(schedule)
        .key(stream)
        .arg(limit.max(1))
        .invoke_async(conn)
        .await?;
    Ok(MoveReport {
        moved,
        next_due: u64::try_from(next).ok().map(Duration::from_millis),
    })
}

/// Schedules `payload` (an event, as `data`) into `schedule`, due `due`;
/// `tag` (its event id) keeps two equal payloads apart.
pub async fn publish_later(
    conn: &mut RedisConn,
    schedule: &str,
    due: Due,
    tag: &str,
    payload: &str,
) -> RedisResult<u64> {
    PUBLISH
        .key(schedule)
        .arg(due_spec(due))
        .arg(tag)
        .arg(payload)
        .invoke_async(conn)
        .await
}
