//! Points in time as operators type and read them.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;

/// Reads a point in time as an operator writes it: a duration ago (`90s`,
/// `15m`, `2h`, `1d`), RFC 3339 (`2026-12-01T02:00:00Z`), or seconds
/// since the epoch.
pub fn parse_time(text: &str, now: SystemTime) -> anyhow::Result<SystemTime> {
    let text = text.trim();
    if let Ok(seconds) = text.parse::<f64>() {
        anyhow::ensure!(seconds >= 0.0, "a time cannot be before 1970");
        return Ok(UNIX_EPOCH + Duration::from_secs_f64(seconds));
    }
    if let Ok(ago) = humantime::parse_duration(text) {
        return now
            .checked_sub(ago)
            .context("that is further back than the clock goes");
    }
    humantime::parse_rfc3339_weak(text).map_err(|_| {
        anyhow::anyhow!(
            "{text:?} is not a time: write a duration ago (15m, 2h, 1d), \
             a UTC time (2026-12-01T02:00:00Z) or seconds since the epoch"
        )
    })
}

/// Seconds since the epoch as `2026-12-01T02:43:20.123Z`.
pub fn time_text(seconds: f64) -> String {
    let time = UNIX_EPOCH + Duration::from_secs_f64(seconds.max(0.0));
    humantime::format_rfc3339_millis(time).to_string()
}

/// Milliseconds since the epoch of `time`.
pub fn millis(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}
