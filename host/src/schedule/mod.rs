//! When a schedule ticks: the arithmetic of its ticks, apart from Redis and
//! from the loop that publishes them.
//!
//! A schedule's ticks are instants in UTC, in milliseconds since the Unix
//! epoch, that every host computes alike from the schedule alone: a cron
//! pattern's matches (standard 5 fields, minute granularity, through
//! `croner`), and `every`'s multiples of its period counted from the epoch
//! (tick k at k·every), so hosts started at different times agree on them.
//! A schedule with both ticks at the union of the two. A tick is named by
//! [`event_id`], so a second publish of one tick is recognisable as such.

use std::fmt;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use croner::parser::{CronParser, Seconds, Year};
use croner::Cron;

/// Shortest `every`: ticks are named to the second, and a host publishes
/// within about a tenth of a second of each.
pub const MIN_EVERY: Duration = Duration::from_secs(1);

/// When a schedule ticks: a cron pattern, a period, or both (the union).
#[derive(Clone)]
pub struct Ticks {
    cron: Option<(String, Cron)>,
    every_ms: Option<i64>,
}

impl fmt::Debug for Ticks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ticks")
            .field("cron", &self.cron.as_ref().map(|(text, _)| text))
            .field("every_ms", &self.every_ms)
            .finish()
    }
}

/// `cron "0 2 * * *"`, `every 5m`, or both joined by `+`: for messages.
impl fmt::Display for Ticks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(cron) = self.cron() {
            write!(f, "cron {cron:?}")?;
        }
        if let Some(every) = self.every() {
            let join = if self.cron.is_some() { " + " } else { "" };
            write!(f, "{join}every {}", humantime::format_duration(every))?;
        }
        Ok(())
    }
}

/// Two schedules tick alike if they are written alike: what a reload
/// compares to decide whether a ticker restarts.
impl PartialEq for Ticks {
    fn eq(&self, other: &Self) -> bool {
        self.cron.as_ref().map(|(text, _)| text) == other.cron.as_ref().map(|(text, _)| text)
            && self.every_ms == other.every_ms
    }
}

impl Eq for Ticks {}

impl Ticks {
    /// Ticks at the matches of `cron` (5 fields, UTC) and/or every `every`
    /// from the epoch; an error, as a sentence, for a pattern that does not
    /// parse or never matches, a period that is not a whole number of
    /// seconds of at least [`MIN_EVERY`], or neither given.
    pub fn new(cron: Option<&str>, every: Option<Duration>) -> Result<Self, TicksError> {
        if cron.is_none() && every.is_none() {
            return Err(TicksError::Neither);
        }
        let cron = cron.map(parse_cron).transpose()?;
        let every_ms = match every {
            None => None,
            Some(every) if every < MIN_EVERY || every.subsec_nanos() != 0 => {
                return Err(TicksError::Every(every));
            }
            Some(every) => Some(i64::try_from(every.as_millis()).map_err(|_| {
                TicksError::Every(every) // past the year 292 million
            })?),
        };
        Ok(Ticks { cron, every_ms })
    }

    /// The cron pattern, as written.
    pub fn cron(&self) -> Option<&str> {
        self.cron.as_ref().map(|(text, _)| text.as_str())
    }

    /// The period of `every`.
    pub fn every(&self) -> Option<Duration> {
        self.every_ms.map(|ms| Duration::from_millis(ms as u64))
    }

    /// The first tick strictly after `t` (ms since the epoch); `None` if
    /// there is none (a cron pattern past its last match).
    pub fn after(&self, t: i64) -> Option<i64> {
        let every = self.every_ms.map(|p| (t.div_euclid(p) + 1) * p);
        // Ticks are whole seconds: a match after the second `t` falls in
        // is after `t`.
        let cron = self.cron.as_ref().and_then(|(_, cron)| {
            let from = at(t.div_euclid(1000) * 1000)?;
            let next = cron.find_next_occurrence(&from, false).ok()?;
            Some(next.timestamp_millis())
        });
        min_some(every, cron)
    }

    /// The newest tick at or before `t`; `None` if there is none.
    pub fn at_or_before(&self, t: i64) -> Option<i64> {
        let every = self.every_ms.map(|p| t.div_euclid(p) * p);
        let cron = self.cron.as_ref().and_then(|(_, cron)| {
            let from = at(t.div_euclid(1000) * 1000)?;
            let previous = cron.find_previous_occurrence(&from, true).ok()?;
            Some(previous.timestamp_millis())
        });
        match (every, cron) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        }
    }
}

/// Why a schedule's timing is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TicksError {
    /// Neither `cron` nor `every`.
    Neither,
    /// The pattern does not parse, or never matches: croner's reason.
    Cron(String),
    /// Not a whole number of seconds, or under [`MIN_EVERY`].
    Every(Duration),
}

impl fmt::Display for TicksError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TicksError::Neither => write!(
                f,
                "needs cron = \"<min> <hour> <day> <month> <weekday>\" (UTC) or every = \"5m\", \
                 or both"
            ),
            TicksError::Cron(reason) => write!(
                f,
                "not a 5-field cron pattern (minute hour day-of-month month day-of-week, UTC, \
                 e.g. \"0 2 * * *\"): {reason}"
            ),
            TicksError::Every(every) => write!(
                f,
                "must be a whole number of seconds, at least 1s (got {})",
                humantime::format_duration(*every)
            ),
        }
    }
}

fn parse_cron(text: &str) -> Result<(String, Cron), TicksError> {
    let parser = CronParser::builder()
        .seconds(Seconds::Disallowed)
        .year(Year::Disallowed)
        .build();
    let cron = parser
        .parse(text)
        .map_err(|err| TicksError::Cron(err.to_string()))?;
    // A pattern that never matches (February 30th) would never tick.
    let epoch = at(0).expect("the epoch is a time");
    if cron.find_next_occurrence(&epoch, false).is_err() {
        return Err(TicksError::Cron("it never matches".into()));
    }
    Ok((text.to_string(), cron))
}

fn min_some(a: Option<i64>, b: Option<i64>) -> Option<i64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The UTC time `ms` after the epoch, if chrono can hold it.
fn at(ms: i64) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp_millis(ms)
}

/// `tick` (ms since the epoch) in RFC 3339, UTC, to the second:
/// `2026-12-07T02:00:00Z`.
pub fn rfc3339(tick: i64) -> String {
    match at(tick) {
        Some(time) => time.to_rfc3339_opts(SecondsFormat::Secs, true),
        None => tick.to_string(),
    }
}

/// The id of schedule `name`'s event for `tick`:
/// `schedule:<name>:<tick in RFC 3339>`. The same on every host and every
/// try, so a repeat of one tick is one event to whoever deduplicates by id.
pub fn event_id(name: &str, tick: i64) -> String {
    format!("schedule:{name}:{}", rfc3339(tick))
}

/// Milliseconds since the epoch, now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ms since the epoch of an RFC 3339 time.
    fn t(text: &str) -> i64 {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .timestamp_millis()
    }

    #[test]
    fn every_ticks_on_multiples_of_its_period_from_the_epoch() {
        let ticks = Ticks::new(None, Some(Duration::from_secs(300))).unwrap();
        let at = t("2026-12-07T19:03:12.250Z");
        assert_eq!(ticks.after(at), Some(t("2026-12-07T19:05:00Z")));
        assert_eq!(ticks.at_or_before(at), Some(t("2026-12-07T19:00:00Z")));
        // On a tick: it is the newest at or before, and not after.
        let on = t("2026-12-07T19:05:00Z");
        assert_eq!(ticks.at_or_before(on), Some(on));
        assert_eq!(ticks.after(on), Some(t("2026-12-07T19:10:00Z")));
        let second = Ticks::new(None, Some(Duration::from_secs(1))).unwrap();
        assert_eq!(second.after(1_999), Some(2_000));
        assert_eq!(second.after(2_000), Some(3_000));
        assert_eq!(second.at_or_before(2_999), Some(2_000));
    }

    #[test]
    fn cron_ticks_at_its_matches_in_utc() {
        let ticks = Ticks::new(Some("0 2 * * *"), None).unwrap();
        let at = t("2026-12-07T19:03:12.250Z");
        assert_eq!(ticks.after(at), Some(t("2026-12-08T02:00:00Z")));
        assert_eq!(ticks.at_or_before(at), Some(t("2026-12-07T02:00:00Z")));
        let on = t("2026-12-07T02:00:00Z");
        assert_eq!(ticks.at_or_before(on), Some(on));
        assert_eq!(ticks.at_or_before(on + 999), Some(on));
        assert_eq!(ticks.after(on), Some(t("2026-12-08T02:00:00Z")));
        assert_eq!(ticks.after(on - 1), Some(on));

        let minutes = Ticks::new(Some("*/15 * * * 1-5"), None).unwrap();
        // Saturday 2026-12-05: the next match is Monday's first quarter.
        assert_eq!(
            minutes.after(t("2026-12-05T10:07:00Z")),
            Some(t("2026-12-07T00:00:00Z"))
        );
        assert_eq!(
            minutes.at_or_before(t("2026-12-05T10:07:00Z")),
            Some(t("2026-12-04T23:45:00Z"))
        );
        let nick = Ticks::new(Some("@hourly"), None).unwrap();
        assert_eq!(
            nick.after(t("2026-12-07T19:03:00Z")),
            Some(t("2026-12-07T20:00:00Z"))
        );
    }

    #[test]
    fn cron_and_every_tick_at_the_union() {
        let ticks = Ticks::new(Some("30 * * * *"), Some(Duration::from_secs(3600))).unwrap();
        let at = t("2026-12-07T19:10:00Z");
        assert_eq!(ticks.after(at), Some(t("2026-12-07T19:30:00Z")));
        assert_eq!(
            ticks.after(t("2026-12-07T19:30:00Z")),
            Some(t("2026-12-07T20:00:00Z"))
        );
        assert_eq!(ticks.at_or_before(at), Some(t("2026-12-07T19:00:00Z")));
        assert_eq!(
            ticks.at_or_before(t("2026-12-07T19:45:00Z")),
            Some(t("2026-12-07T19:30:00Z"))
        );
    }

    #[test]
    fn bad_timings_are_refused_with_a_reason() {
        assert_eq!(Ticks::new(None, None).unwrap_err(), TicksError::Neither);
        for bad in [
            "",
            "0 2 * *",
            "0 0 2 * * *",
            "61 * * * *",
            "0 2 * * * 2027",
            "nope",
        ] {
            let err = Ticks::new(Some(bad), None).unwrap_err();
            assert!(matches!(err, TicksError::Cron(_)), "{bad:?}: {err:?}");
        }
        let never = Ticks::new(Some("0 0 30 2 *"), None).unwrap_err();
        assert!(never.to_string().contains("never matches"), "{never}");
        for bad in [Duration::from_millis(500), Duration::from_millis(1500)] {
            let err = Ticks::new(None, Some(bad)).unwrap_err();
            assert!(err.to_string().contains("whole number of seconds"), "{err}");
        }
    }

    #[test]
    fn a_ticks_id_names_the_schedule_and_the_time() {
        let tick = t("2026-12-07T02:00:00Z");
        assert_eq!(rfc3339(tick), "2026-12-07T02:00:00Z");
        assert_eq!(
            event_id("nightly", tick),
            "schedule:nightly:2026-12-07T02:00:00Z"
        );
        let same = Ticks::new(Some("0 2 * * *"), None).unwrap();
        assert_eq!(same, Ticks::new(Some("0 2 * * *"), None).unwrap());
        assert_ne!(same, Ticks::new(Some("0 3 * * *"), None).unwrap());
        assert_eq!(same.to_string(), "cron \"0 2 * * *\"");
        let both = Ticks::new(Some("30 * * * *"), Some(Duration::from_secs(300))).unwrap();
        assert_eq!(both.to_string(), "cron \"30 * * * *\" + every 5m");
    }
}
