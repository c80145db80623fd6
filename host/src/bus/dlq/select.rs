//! What a DLQ command works on: whose DLQ ([`Target`]) and which of its
//! entries ([`Filter`], [`Selection`]), read from what a person typed in
//! the CLI or the console, by one set of rules.

use std::fmt;
use std::time::SystemTime;

use super::error::DlqError;
use super::letter::{is_stream_id, DeadLetter};
use super::summary::Summary;
use super::time::{millis, parse_time};
use crate::bus::keys::{Keys, QueueKeys};

/// Whose DLQ: the bus's (entries the fan-out could not route) or one
/// subscriber's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Bus,
    Subscriber(String),
}

impl Target {
    /// Reads LeanMQ's queue name: `all` is the bus, `sub:<name>` or a bare
    /// `<name>` a subscriber (a subscriber called `all` is `sub:all`).
    pub fn parse(text: &str) -> Result<Self, DlqError> {
        let name = match text {
            "all" => return Ok(Target::Bus),
            _ => text.strip_prefix("sub:").unwrap_or(text),
        };
        if name.is_empty() || name.contains(':') {
            return Err(DlqError::NotFound(format!(
                "{text:?} is not a subscriber: give its name as in [subscribers.<name>], or `all` \
                 for the bus's DLQ"
            )));
        }
        Ok(Target::Subscriber(name.to_string()))
    }

    /// Whether this target's DLQ is one these keys reach: on a Redis
    /// Cluster the bus's dead letters are one DLQ per ingress partition,
    /// which these commands do not cover yet.
    pub(super) fn reachable(&self, keys: &Keys) -> Result<(), DlqError> {
        if keys.is_cluster() && *self == Target::Bus {
            return Err(DlqError::NotFound(
                "on a Redis Cluster the bus's dead letters are in one DLQ per ingress partition \
                 (events:all:{p<i>.<k>}:dlq), which eventhost dlq does not reach yet; read them \
                 with redis-cli -c (subscribers' DLQs work as on one server)"
                    .into(),
            ));
        }
        Ok(())
    }

    /// The streams, DLQ and groups of this target.
    pub fn queue(&self, keys: &Keys) -> QueueKeys {
        match self {
            Target::Bus => keys.all(),
            Target::Subscriber(name) => keys.subscriber(name),
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Bus => f.write_str("the bus"),
            Target::Subscriber(name) => write!(f, "subscriber {name}"),
        }
    }
}

/// Which dead letters a command works on; every part left out matches all.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// The kind of the last failure (`trap`, `reject`...).
    pub kind: Option<String>,
    pub event_type: Option<String>,
    /// Dead-lettered at or after this time, in milliseconds since the epoch.
    pub since_ms: Option<u64>,
}

impl Filter {
    /// A filter as a person types it, in the CLI or the console: a part
    /// left out or blank selects everything; `since` is read by
    /// [`parse_time`](super::parse_time).
    pub fn parse(
        kind: Option<&str>,
        event_type: Option<&str>,
        since: Option<&str>,
    ) -> Result<Self, DlqError> {
        let since_ms = match given(since) {
            Some(text) => Some(millis(
                parse_time(text, SystemTime::now())
                    .map_err(|err| DlqError::BadRequest(format!("since: {err:#}")))?,
            )),
            None => None,
        };
        Ok(Filter {
            kind: given(kind).map(str::to_string),
            event_type: given(event_type).map(str::to_string),
            since_ms,
        })
    }

    /// Whether `letter` is selected.
    pub fn matches(&self, letter: &DeadLetter) -> bool {
        self.kind
            .as_deref()
            .is_none_or(|k| letter.kind() == Some(k))
            && self
                .event_type
                .as_deref()
                .is_none_or(|t| letter.event_type.as_deref() == Some(t))
            && self.since_ms.is_none_or(|s| letter.dead_lettered_ms >= s)
    }

    /// Whether `summary` is selected; `None` when the summary does not
    /// know what the filter tests (a big letter's failures were not read).
    pub fn decides(&self, summary: &Summary) -> Option<bool> {
        let test = |want: &Option<String>, known: Option<Option<&str>>| match want {
            None => Some(true),
            Some(want) => known.map(|found| found == Some(want.as_str())),
        };
        let tests = [
            Some(self.since_ms.is_none_or(|s| summary.dead_lettered_ms >= s)),
            test(&self.kind, summary.known_kind()),
            test(&self.event_type, summary.known_event_type()),
        ];
        if tests.contains(&Some(false)) {
            Some(false)
        } else if tests.contains(&None) {
            None
        } else {
            Some(true)
        }
    }

    /// Whether it selects everything.
    pub fn is_empty(&self) -> bool {
        *self == Filter::default()
    }
}

/// What a replay or a purge works on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    /// These entries (ids in the DLQ).
    Ids(Vec<String>),
    /// Every entry the filter selects (an empty filter: all of them), up
    /// to the last entry there when the command started: what fails again
    /// while it runs is not picked up again.
    Matching(Filter),
}

impl Selection {
    /// Entry ids, or `all`, or a filter: exactly one way of choosing, so
    /// that nothing is replayed or deleted by a slip (ids with a filter,
    /// or nothing said at all). `all` with a filter: what it selects.
    pub fn new(ids: Vec<String>, all: bool, filter: Filter) -> Result<Self, DlqError> {
        match (ids.is_empty(), all, filter.is_empty()) {
            (false, false, true) => {
                for id in &ids {
                    entry_id(id)?;
                }
                Ok(Selection::Ids(ids))
            }
            (false, _, _) => Err(DlqError::BadRequest(
                "give entry ids, or all (and filters), not both".into(),
            )),
            (true, false, true) => Err(DlqError::BadRequest(
                "say which dead letters: entry ids, all, or filters by kind, type or since".into(),
            )),
            (true, _, _) => Ok(Selection::Matching(filter)),
        }
    }
}

/// A part of a filter, if given: blank is not.
fn given(part: Option<&str>) -> Option<&str> {
    part.map(str::trim).filter(|p| !p.is_empty())
}

/// Refuses what is not an entry id before it reaches a script.
pub(super) fn entry_id(id: &str) -> Result<(), DlqError> {
    if is_stream_id(id) {
        return Ok(());
    }
    Err(DlqError::BadRequest(format!(
        "{id:?} is not an entry id; ids look like 1764557000123-0 (see `eventhost dlq list`)"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_read_like_leanmq_queue_names() {
        assert_eq!(Target::parse("all").unwrap(), Target::Bus);
        assert_eq!(
            Target::parse("pay").unwrap(),
            Target::Subscriber("pay".into())
        );
        assert_eq!(
            Target::parse("sub:all").unwrap(),
            Target::Subscriber("all".into())
        );
        assert!(Target::parse("events:sub:pay").is_err());
        assert!(Target::parse("sub:").is_err());
        let keys = Keys::new("events:");
        assert_eq!(Target::Bus.queue(&keys).dlq, "events:all:dlq");
        assert_eq!(
            Target::parse("pay").unwrap().queue(&keys).stream,
            "events:sub:pay"
        );
        assert!(Target::Bus.reachable(&keys).is_ok());
        assert!(matches!(
            Target::Bus.reachable(&Keys::cluster("events:", 2)),
            Err(DlqError::NotFound(_))
        ));
    }

    #[test]
    fn a_selection_is_ids_or_all_or_filters_never_a_mix_or_nothing() {
        let trap = Filter::parse(Some("trap"), Some(" "), None).unwrap();
        assert_eq!(trap.kind.as_deref(), Some("trap"));
        assert_eq!(trap.event_type, None, "blank selects everything");
        let ids = vec!["1-0".to_string()];
        assert_eq!(
            Selection::new(ids.clone(), false, Filter::default()).unwrap(),
            Selection::Ids(ids.clone())
        );
        assert_eq!(
            Selection::new(vec![], true, trap.clone()).unwrap(),
            Selection::Matching(trap.clone())
        );
        assert_eq!(
            Selection::new(vec![], false, trap.clone()).unwrap(),
            Selection::Matching(trap.clone()),
            "filters alone select what they match"
        );
        assert_eq!(
            Selection::new(vec![], true, Filter::default()).unwrap(),
            Selection::Matching(Filter::default())
        );
        for (ids, all, filter) in [
            (vec![], false, Filter::default()),
            (ids.clone(), true, Filter::default()),
            (ids.clone(), false, trap),
            (vec!["x".to_string()], false, Filter::default()),
        ] {
            let err = Selection::new(ids.clone(), all, filter).unwrap_err();
            assert!(matches!(err, DlqError::BadRequest(_)), "{ids:?} {all}");
        }
        let err = Filter::parse(None, None, Some("yesterday")).unwrap_err();
        assert!(
            matches!(&err, DlqError::BadRequest(m) if m.contains("15m")),
            "{err}"
        );
    }
}
