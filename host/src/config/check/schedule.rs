//! Checking one `[schedules.<name>]` table: its event, when it ticks, and
//! what it does with missed ticks.

use serde_json::{Map, Value};

use super::*;
use crate::config::raw::RawSchedule;
use crate::config::{Missed, ScheduleConfig};
use crate::schedule::{Ticks, TicksError};

/// Keys of an event the schedule writes itself: `data` must leave them
/// out.
const RESERVED: [&str; 4] = ["event_type", "event_id", "timestamp", "_metadata"];

/// Room the envelope (`event_type`, `event_id`, `timestamp`, `_metadata`)
/// takes beside `data` in an event, at most, for a name under 200 bytes.
const ENVELOPE_BYTES: usize = 1024;

impl Checker<'_> {
    pub(super) fn check_schedule(
        &mut self,
        name: String,
        name_span: Option<Range<usize>>,
        raw: RawSchedule,
        bus: &BusConfig,
    ) -> ScheduleConfig {
        let key = |field: &str| format!("schedules.{name}.{field}");
        if !valid_name(&name) {
            self.push(name_span.clone(), &format!("schedules.{name}"), NAME_RULE);
        }
        let event_type = match raw.event_type {
            Some(t) if t.get_ref().trim().is_empty() => {
                self.push(Some(t.span()), &key("event_type"), "must not be empty");
                String::new()
            }
            Some(t) => t.into_inner(),
            None => {
                self.push(
                    name_span.clone(),
                    &key("event_type"),
                    "is missing: name the type of the events this schedule publishes, \
                     e.g. event_type = \"NightlyReport\"",
                );
                String::new()
            }
        };
        let every =
            raw.every
                .as_ref()
                .and_then(|every| match humantime::parse_duration(every.get_ref()) {
                    Ok(duration) => Some(duration),
                    Err(err) => {
                        self.push(
                            Some(every.span()),
                            &key("every"),
                            format!("not a duration like \"30s\", \"5m\" or \"1h\" ({err})"),
                        );
                        None
                    }
                });
        let cron = raw.cron.as_ref().map(|c| c.get_ref().as_str());
        let ticks = match Ticks::new(cron, every) {
            Ok(ticks) => ticks,
            Err(err) => {
                // Located at the key at fault; a schedule with neither (or
                // an `every` already refused) at its table.
                let span = match &err {
                    TicksError::Cron(_) => raw.cron.as_ref().map(Spanned::span),
                    TicksError::Every(_) => raw.every.as_ref().map(Spanned::span),
                    TicksError::Neither => None,
                };
                let field = match &err {
                    TicksError::Cron(_) => "cron",
                    _ => "every",
                };
                if !(matches!(err, TicksError::Neither) && raw.every.is_some()) {
                    self.push(span.or(name_span.clone()), &key(field), err.to_string());
                }
                // A bad pattern hides nothing wrong with `every`.
                if let (TicksError::Cron(_), Some(every), Some(raw_every)) =
                    (&err, every, &raw.every)
                {
                    if let Err(err) = Ticks::new(None, Some(every)) {
                        self.push(Some(raw_every.span()), &key("every"), err.to_string());
                    }
                }
                Ticks::new(None, Some(crate::schedule::MIN_EVERY)).expect("1 s is a period")
            }
        };
        let data = match raw.data {
            None => Map::new(),
            Some(data) => self.schedule_data(data, &key("data"), bus),
        };
        let missed = match raw.missed {
            None => Missed::Once,
            Some(choice) => match choice.get_ref().as_str() {
                "once" => Missed::Once,
                "skip" => Missed::Skip,
                other => {
                    self.push(
                        Some(choice.span()),
                        &key("missed"),
                        format!(
                            "must be \"once\" (the newest tick missed while no host ran is \
                             published once, late) or \"skip\" (missed ticks are not \
                             published); got {other:?}"
                        ),
                    );
                    Missed::Once
                }
            },
        };
        ScheduleConfig {
            name,
            event_type,
            ticks,
            data,
            missed,
        }
    }

    /// `data`: a table, as the JSON object each event carries, without the
    /// keys the schedule writes, and small enough to be routed.
    fn schedule_data(
        &mut self,
        data: Spanned<toml::Value>,
        key: &str,
        bus: &BusConfig,
    ) -> Map<String, Value> {
        let span = data.span();
        let toml::Value::Table(table) = data.into_inner() else {
            self.push(
                Some(span),
                key,
                "must be a table, e.g. data = { report = \"daily\" }",
            );
            return Map::new();
        };
        let mut object = Map::new();
        for (field, value) in table {
            if RESERVED.contains(&field.as_str()) {
                self.push(
                    Some(span.clone()),
                    &format!("{key}.{field}"),
                    "is written by the schedule itself (the id names the schedule and the tick); \
                     leave it out",
                );
                continue;
            }
            object.insert(field, json(value));
        }
        let bytes = Value::Object(object.clone()).to_string().len() + ENVELOPE_BYTES;
        if bytes > bus.max_payload_bytes {
            self.push(
                Some(span),
                key,
                format!(
                    "makes events of about {bytes} bytes, over bus.max_payload_bytes ({}): the \
                     fan-out would dead-letter every one",
                    bus.max_payload_bytes
                ),
            );
        }
        object
    }
}

/// A TOML value as JSON; a date or time as its RFC 3339 text.
fn json(value: toml::Value) -> Value {
    match value {
        toml::Value::String(s) => Value::String(s),
        toml::Value::Integer(i) => Value::from(i),
        toml::Value::Float(f) => Value::from(f),
        toml::Value::Boolean(b) => Value::Bool(b),
        toml::Value::Datetime(d) => Value::String(d.to_string()),
        toml::Value::Array(items) => Value::Array(items.into_iter().map(json).collect()),
        toml::Value::Table(table) => {
            Value::Object(table.into_iter().map(|(k, v)| (k, json(v))).collect())
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::json;

    use crate::config::{parse, ConfigError, Missed, Problem};
    use crate::schedule::Ticks;

    fn parse_text(text: &str) -> Result<crate::config::Config, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        parse(&dir.path().join("eventhost.toml"), text)
    }

    fn problems(text: &str) -> Vec<Problem> {
        parse_text(text).unwrap_err().problems
    }

    #[test]
    fn a_schedule_becomes_typed_settings_sorted_by_name() {
        let config = parse_text(
            r#"
[schedules.nightly]
event_type = "NightlyReport"
cron = "0 2 * * *"
missed = "skip"
data = { report = "sales", days = 1, tags = ["a"], inner = { on = true } }

[schedules.beat]
event_type = "Beat"
every = "5m"
"#,
        )
        .unwrap();
        let names: Vec<&str> = config.schedules.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["beat", "nightly"]);
        let beat = &config.schedules[0];
        assert_eq!(beat.event_type, "Beat");
        assert_eq!(
            beat.ticks,
            Ticks::new(None, Some(Duration::from_secs(300))).unwrap()
        );
        assert_eq!(beat.missed, Missed::Once, "the default");
        assert!(beat.data.is_empty());
        let nightly = &config.schedules[1];
        assert_eq!(nightly.ticks.cron(), Some("0 2 * * *"));
        assert_eq!(nightly.missed, Missed::Skip);
        assert_eq!(
            serde_json::Value::Object(nightly.data.clone()),
            json!({"report": "sales", "days": 1, "tags": ["a"], "inner": {"on": true}})
        );
        let both = parse_text(
            "[schedules.b]\nevent_type = \"T\"\ncron = \"30 * * * *\"\nevery = \"1h\"\n",
        )
        .unwrap();
        assert_eq!(
            both.schedules[0].ticks.every(),
            Some(Duration::from_secs(3600))
        );
        assert_eq!(both.schedules[0].ticks.cron(), Some("30 * * * *"));
    }

    #[test]
    fn every_mistake_is_reported_at_its_line_and_key() {
        let text = r#"[schedules.a]
event_type = ""
cron = "0 2 * *"
every = "0s"

[schedules.b]
every = "soon"
missed = "later"

[schedules.c]
event_type = "T"
every = "1500ms"
data = { event_id = "x", fine = 1 }

[schedules."bad:name"]
event_type = "T"

[schedules.d]
event_type = "T"
every = "1s"
data = "text"
"#;
        let found: Vec<(usize, String)> = problems(text)
            .into_iter()
            .map(|p| (p.line, p.key))
            .collect();
        assert_eq!(
            found,
            [
                (2, "schedules.a.event_type".to_string()),
                (3, "schedules.a.cron".into()),
                (4, "schedules.a.every".into()),
                (6, "schedules.b.event_type".into()),
                (7, "schedules.b.every".into()),
                (8, "schedules.b.missed".into()),
                (12, "schedules.c.every".into()),
                (13, "schedules.c.data.event_id".into()),
                (15, "schedules.bad:name".into()),
                (15, "schedules.bad:name.every".into()),
                (21, "schedules.d.data".into()),
            ]
        );
        let all = problems(text);
        let message = |key: &str| {
            all.iter()
                .find(|p| p.key == key)
                .map(|p| p.to_string())
                .unwrap()
        };
        assert!(message("schedules.a.cron").contains("5-field cron"));
        assert!(message("schedules.b.every").contains("not a duration"));
        assert!(message("schedules.c.every").contains("whole number of seconds"));
        assert!(message("schedules.bad:name.every").contains("needs cron"));
        assert!(message("schedules.b.missed").contains("\"once\""));
    }

    #[test]
    fn an_unknown_key_in_a_schedule_is_refused() {
        let found =
            problems("[schedules.a]\nevent_type = \"T\"\nevery = \"1s\"\nmissd = \"skip\"\n");
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].line, 4);
        assert!(found[0].message.contains("missd"), "{}", found[0]);
    }

    #[test]
    fn data_too_large_to_route_is_refused() {
        let text = format!(
            "[bus]\nmax_payload_bytes = 2000\n[schedules.a]\nevent_type = \"T\"\nevery = \"1s\"\n\
             data = {{ blob = \"{}\" }}\n",
            "x".repeat(1500)
        );
        let found = problems(&text);
        assert_eq!(found.len(), 1);
        assert_eq!(
            (found[0].line, found[0].key.as_str()),
            (6, "schedules.a.data")
        );
    }
}
