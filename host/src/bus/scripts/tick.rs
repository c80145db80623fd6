//! Publishing a schedule's tick once across hosts (see `tick.lua`): every
//! host that runs the schedule calls it for each tick; the first call
//! publishes, the others find the tick done.

use std::sync::LazyLock;

use redis::{RedisResult, Script};

use crate::bus::connection::RedisConn;
use crate::bus::keys::ScheduleKeys;

static SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("tick.lua")));

/// How a host came to a tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// It was running and waited for the tick: publish it.
    OnTime,
    /// The tick passed while no host published it; the schedule publishes
    /// such a tick once (if it ran before).
    MissedOnce,
    /// The same, and the schedule skips such ticks.
    MissedSkip,
}

impl Arrival {
    fn arg(self) -> &'static str {
        match self {
            Arrival::OnTime => "on-time",
            Arrival::MissedOnce => "once",
            Arrival::MissedSkip => "skip",
        }
    }
}

/// What a call came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ticked {
    /// Published, as this entry of the ingress.
    Published(String),
    /// This tick or a later one was published already (by another host,
    /// or by an earlier try of this one).
    Done,
    /// A missed tick, left unpublished.
    Skipped,
}

/// Publishes `event` (an entry's `data`) for `tick` (ms since the epoch)
/// of the schedule with `keys` and `timing` (its cron and every, as
/// written), unless that tick or a later one was.
pub async fn tick(
    conn: &mut RedisConn,
    keys: &ScheduleKeys,
    timing: &str,
    tick: i64,
    arrival: Arrival,
    event: &str,
) -> RedisResult<Ticked> {
    let (code, id): (i64, Option<String>) = {
        let reply: Vec<redis::Value> = SCRIPT
            .key(&keys.state)
            .key(&keys.ingress.stream)
            .arg(tick)
            .arg(arrival.arg())
            .arg(event)
            .arg(timing)
            .invoke_async(conn)
            .await?;
        let code = match reply.first() {
            Some(redis::Value::Int(code)) => *code,
            _ => -1,
        };
        let id = match reply.get(1) {
            Some(redis::Value::BulkString(bytes)) => {
                Some(String::from_utf8_lossy(bytes).into_owned())
            }
            Some(redis::Value::SimpleString(text)) => Some(text.clone()),
            _ => None,
        };
        (code, id)
    };
    match (code, id) {
        (1, Some(id)) => Ok(Ticked::Published(id)),
        (0, _) => Ok(Ticked::Done),
        (2, _) => Ok(Ticked::Skipped),
        (code, _) => Err(redis::RedisError::from((
            redis::ErrorKind::UnexpectedReturnType,
            "unexpected reply from the tick script",
            format!("code {code}"),
        ))),
    }
}
