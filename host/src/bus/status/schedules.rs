//! Each schedule's last and next tick, for `eventhost status`: the last
//! from its hash in Redis (what any host published), the next from its
//! timing. Schedules are the config's: Redis does not list them.

use redis::RedisResult;
use serde::Serialize;

use crate::bus::connection::RedisConn;
use crate::bus::keys::Keys;
use crate::config::ScheduleConfig;

/// One schedule, as `status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ScheduleStatus {
    pub name: String,
    pub event_type: String,
    /// Its `cron` pattern, as written.
    pub cron: Option<String>,
    /// Its `every`, in seconds.
    pub every_s: Option<u64>,
    /// The newest tick published, ms since the epoch.
    pub last_tick: Option<i64>,
    /// The newest missed tick left unpublished, ms since the epoch.
    pub last_skipped: Option<i64>,
    /// The tick after `now`, ms since the epoch.
    pub next_tick: Option<i64>,
}

/// The status of each of `schedules` at `now` (ms since the epoch).
pub async fn schedules_status(
    conn: &mut RedisConn,
    keys: &Keys,
    schedules: &[ScheduleConfig],
    now: i64,
) -> RedisResult<Vec<ScheduleStatus>> {
    let mut out = Vec::with_capacity(schedules.len());
    for schedule in schedules {
        let (tick, skipped): (Option<String>, Option<String>) = redis::cmd("HMGET")
            .arg(keys.schedule(&schedule.name).state)
            .arg("tick")
            .arg("skipped")
            .query_async(conn)
            .await?;
        out.push(ScheduleStatus {
            name: schedule.name.clone(),
            event_type: schedule.event_type.clone(),
            cron: schedule.ticks.cron().map(str::to_string),
            every_s: schedule.ticks.every().map(|d| d.as_secs()),
            // Anyone who can write Redis can write these: a number or none.
            last_tick: tick.and_then(|t| t.parse().ok()),
            last_skipped: skipped.and_then(|t| t.parse().ok()),
            next_tick: schedule.ticks.after(now),
        });
    }
    Ok(out)
}
