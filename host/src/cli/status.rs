//! `eventhost status`: the bus as Redis tells it ([`crate::bus::status`]),
//! as text for a person or JSON (`--json`) for a program.
//!
//! Every text in it comes from Redis, which anyone who can publish can
//! write: in the text form each is [escaped](super::text) (no control
//! character reaches the terminal) and cut by characters.

use super::text::{first_chars, shown};
use super::{connect, say, RedisArgs};
use crate::bus::status::{self, Configured, OrderStatus, QueueStatus, ScheduleStatus, Status};

/// Most characters of a name in the subscribers' table.
const CELL: usize = 64;

/// Most characters of any other text from Redis.
const TEXT: usize = 200;

/// Characters of a build's digest shown in the table.
const BUILD: usize = 12;

/// `text` from Redis, as printed: escaped, at most [`TEXT`] characters.
fn out(text: &str) -> String {
    shown(text, TEXT)
}

/// Reads the status and prints it.
pub async fn run(redis: &RedisArgs, json: bool) -> anyhow::Result<()> {
    let mut bus = connect(redis).await?;
    let configured: Vec<Configured> = bus
        .config
        .as_ref()
        .map(|c| c.subscribers.iter().map(Configured::from).collect())
        .unwrap_or_default();
    let mut status = status::read(&mut bus.conn, &bus.keys, &configured)
        .await
        .map_err(|err| anyhow::anyhow!("cannot read the bus's status: {err}"))?;
    if let Some(config) = &bus.config {
        let now = (status.at * 1000.0) as i64;
        status.schedules =
            status::schedules_status(&mut bus.conn, &bus.keys, &config.schedules, now)
                .await
                .map_err(|err| anyhow::anyhow!("cannot read the schedules' status: {err}"))?;
    }
    if json {
        say(serde_json::to_string_pretty(&status)?);
    } else {
        print(&status);
    }
    Ok(())
}

fn print(status: &Status) {
    print_bus(status);
    if !status.schedules.is_empty() {
        say("schedules:");
        for line in schedule_lines(&status.schedules, status.at) {
            say(line);
        }
    }
}

/// The hosts, the fan-out and the subscribers.
fn print_bus(status: &Status) {
    let alive = status.hosts.iter().filter(|h| h.alive).count();
    say(format_args!(
        "hosts: {alive} alive{}",
        if alive == 0 {
            " (no `eventhost run` is serving this bus)"
        } else {
            ""
        }
    ));
    for host in &status.hosts {
        let seen = ago(status.at - host.last_seen);
        if host.alive {
            say(format_args!(
                "  {}  alive, seen {seen} ago, up {}, pid {}, http {}, eventhost {}",
                out(&host.consumer),
                host.started_at
                    .map_or("?".into(), |s| duration(status.at - s)),
                host.pid.map_or("?".into(), |p| p.to_string()),
                out(host.listen.as_deref().unwrap_or("off")),
                out(host.version.as_deref().unwrap_or("?")),
            ));
        } else {
            say(format_args!(
                "  {}  gone, last seen {seen} ago",
                out(&host.consumer)
            ));
        }
    }
    let f = &status.fanout;
    say(format_args!(
        "fan-out: {}  length {}  lag {}  pending {}  routed {:.1}/s  dlq {} {}",
        out(&f.stream),
        f.length,
        lag(f),
        f.pending,
        f.handled_per_s,
        out(&f.dlq),
        f.dlq_depth
    ));
    pending_lines(f);
    schedule_line(f, "events published for later", status.at);
    let not_read = registry_note(status);
    if status.subscribers.is_empty() {
        say("subscribers: none");
        if let Some(note) = not_read {
            say(note);
        }
        return;
    }
    say("subscribers:");
    let head = [
        "NAME",
        "PLUGIN",
        "BUILD",
        "TYPES",
        "LENGTH",
        "LAG",
        "PENDING",
        "OLDEST",
        "DLQ",
        "HANDLED/S",
        "DEAD/S",
    ];
    let rows: Vec<Vec<String>> = status
        .subscribers
        .iter()
        .map(|s| {
            let mut builds: Vec<String> = s
                .builds
                .iter()
                .map(|b| {
                    b.build
                        .as_deref()
                        .map_or("-".into(), |d| first_chars(d, BUILD))
                })
                .collect();
            builds.dedup();
            let build = match builds.as_slice() {
                [] => "-".to_string(),
                [one] => one.clone(),
                many => format!("{} builds", many.len()),
            };
            let oldest = s
                .queue
                .pending_by_consumer
                .iter()
                .filter_map(|c| c.oldest_ms)
                .max();
            vec![
                shown(&s.name, CELL),
                s.plugin
                    .as_deref()
                    .map_or_else(|| "(not running)".into(), |p| shown(p, CELL)),
                build,
                if s.events.is_empty() {
                    "-".into()
                } else {
                    shown(&s.events.join(","), CELL)
                },
                s.queue.length.to_string(),
                lag(&s.queue),
                s.queue.pending.to_string(),
                oldest.map_or("-".into(), |ms| duration(ms as f64 / 1000.0)),
                s.queue.dlq_depth.to_string(),
                format!("{:.1}", s.queue.handled_per_s),
                format!("{:.1}", s.queue.dead_lettered_per_s),
            ]
        })
        .collect();
    let mut widths: Vec<usize> = head.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        cells
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    say(format_args!(
        "  {}",
        line(head.iter().map(|h| h.to_string()).collect())
    ));
    for (row, s) in rows.into_iter().zip(&status.subscribers) {
        say(format_args!("  {}", line(row)));
        let mut distinct: Vec<&Option<String>> = s.builds.iter().map(|b| &b.build).collect();
        distinct.dedup();
        if distinct.len() > 1 {
            for b in &s.builds {
                say(format_args!(
                    "    build on {}: {}",
                    out(&b.consumer),
                    out(b.build.as_deref().unwrap_or("-"))
                ));
            }
        }
        pending_lines(&s.queue);
        schedule_line(&s.queue, "retries", status.at);
        let after = &s.after_commit;
        if after.queued > 0 || after.sent_per_s > 0.0 || after.dead_lettered_per_s > 0.0 {
            say(format_args!(
                "    after-commit requests: {} queued, {} being sent, {:.1}/s sent, {:.1}/s \
                 dead-lettered (kind http, in its dlq)",
                after.queued, after.sending, after.sent_per_s, after.dead_lettered_per_s
            ));
        }
        if let Some(order) = &s.order {
            for line in order_lines(order) {
                say(line);
            }
        }
    }
    if let Some(note) = not_read {
        say(note);
    }
}

/// One line per schedule: its event, timing, last tick and next tick.
fn schedule_lines(schedules: &[ScheduleStatus], at: f64) -> Vec<String> {
    let when = |tick: Option<i64>, none: &str| match tick {
        None => none.to_string(),
        Some(tick) => {
            let from_now = tick as f64 / 1000.0 - at;
            let rel = if from_now > 0.0 {
                format!("in {}", duration(from_now))
            } else {
                format!("{} ago", ago(-from_now))
            };
            format!("{} ({rel})", crate::schedule::rfc3339(tick))
        }
    };
    schedules
        .iter()
        .map(|s| {
            let mut timing = Vec::new();
            if let Some(cron) = &s.cron {
                timing.push(format!("cron {:?}", out(cron)));
            }
            if let Some(every) = s.every_s {
                timing.push(format!(
                    "every {}",
                    humantime::format_duration(std::time::Duration::from_secs(every))
                ));
            }
            let skipped = match s.last_skipped {
                Some(t) if s.last_tick.is_none_or(|last| t > last) => {
                    format!("  skipped {}", when(Some(t), ""))
                }
                _ => String::new(),
            };
            format!(
                "  {}  {}  {}  last {}{skipped}  next {}",
                out(&s.name),
                out(&s.event_type),
                timing.join(" + "),
                when(s.last_tick, "never"),
                when(s.next_tick, "never"),
            )
        })
        .collect()
}

/// What the table leaves out when the registry holds more than a status
/// reads.
fn registry_note(status: &Status) -> Option<String> {
    (status.registry_not_read > 0).then(|| {
        format!(
            "  {} more members of the LeanMQ registry not shown (status reads at most {} of \
             them; the config's subscribers and those of live hosts are always shown)",
            status.registry_not_read,
            status::REGISTRY_READ
        )
    })
}

/// A subscriber's order per key, under its row: the counts, then each of
/// the oldest parked keys (they wait for an operator).
fn order_lines(order: &OrderStatus) -> Vec<String> {
    let plural = |n: u64| if n == 1 { "" } else { "s" };
    let held = match order.oldest_held_s {
        Some(age) if order.held > 0 => format!(
            "{} key{} holding events back, the oldest routed {} ago",
            order.held,
            plural(order.held),
            duration(age)
        ),
        _ => "no event held".to_string(),
    };
    let parked = match order.parked {
        0 => "no key parked".to_string(),
        n => format!(
            "{n} key{} PARKED (each waits for `eventhost dlq replay` or `eventhost dlq skip` \
             of its dead letter)",
            plural(n)
        ),
    };
    let mut lines = vec![format!(
        "    order by {} (a dead letter {} its key): {parked}, {held}",
        out(&order.order_by),
        if order.on_dead_letter == "park" {
            "parks"
        } else {
            "skips to the next event of"
        },
    )];
    for key in &order.oldest_parked {
        let mut name = out(&key.key);
        if key.key_cut && !name.ends_with('…') {
            name.push('…');
        }
        lines.push(format!(
            "      parked {} ago: {name}{}",
            duration(key.age_s),
            key.dead_letter
                .as_deref()
                .map_or(String::new(), |id| format!(" (dead letter {})", out(id)))
        ));
    }
    let more = order
        .parked
        .saturating_sub(order.oldest_parked.len() as u64);
    if more > 0 {
        lines.push(format!("      and {more} more parked key{}", plural(more)));
    }
    lines
}

/// What waits in a queue's schedule (`what`), if anything: how many, and
/// when the next is due.
fn schedule_line(queue: &QueueStatus, what: &str, now: f64) {
    let schedule = &queue.schedule;
    if schedule.scheduled == 0 {
        return;
    }
    let next = schedule.next_due.map_or("-".into(), |due| {
        if due <= now {
            format!("now ({} late)", duration(now - due))
        } else {
            format!("in {}", duration(due - now))
        }
    });
    say(format_args!(
        "    scheduled: {} {what}, the next due {next}",
        schedule.scheduled
    ));
}

/// Who holds a queue's pending entries.
fn pending_lines(queue: &QueueStatus) {
    for c in &queue.pending_by_consumer {
        say(format_args!(
            "    pending on {}: {}{}",
            out(&c.consumer),
            c.pending,
            c.oldest_ms.map_or(String::new(), |ms| format!(
                " (oldest {})",
                duration(ms as f64 / 1000.0)
            ))
        ));
    }
}

fn lag(queue: &QueueStatus) -> String {
    match (queue.group_exists, queue.lag) {
        (false, _) => "no group".into(),
        (true, Some(lag)) => lag.to_string(),
        (true, None) => "?".into(),
    }
}

fn ago(seconds: f64) -> String {
    duration(seconds.max(0.0))
}

/// `850 ms`, `12 s`, `3 min`, `2 h`, `4 d`.
fn duration(seconds: f64) -> String {
    match seconds {
        s if s < 1.0 => format!("{} ms", (s * 1000.0).round() as u64),
        s if s < 120.0 => format!("{} s", s.round() as u64),
        s if s < 7200.0 => format!("{} min", (s / 60.0).round() as u64),
        s if s < 172_800.0 => format!("{} h", (s / 3600.0).round() as u64),
        s => format!("{} d", (s / 86_400.0).round() as u64),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_schedule_shows_its_last_and_next_tick() {
        let at = 1_796_700_000.0; // 2026-12-08T03:20:00Z
        let s = ScheduleStatus {
            name: "nightly".into(),
            event_type: "Report".into(),
            cron: Some("0 2 * * *".into()),
            every_s: None,
            last_tick: Some(1_796_608_800_000),
            last_skipped: None,
            next_tick: Some(1_796_695_200_000 + 86_400_000),
        };
        let never = ScheduleStatus {
            name: "beat".into(),
            cron: None,
            every_s: Some(300),
            last_tick: None,
            last_skipped: Some(1_796_699_700_000),
            next_tick: Some(1_796_700_300_000),
            ..s.clone()
        };
        assert_eq!(
            schedule_lines(&[s, never], at),
            [
                "  nightly  Report  cron \"0 2 * * *\"  last 2026-12-07T02:00:00Z (25 h ago)  \
                 next 2026-12-09T02:00:00Z (in 23 h)",
                "  beat  Report  every 5m  last never  skipped 2026-12-08T03:15:00Z (5 min ago)  \
                 next 2026-12-08T03:25:00Z (in 5 min)"
            ]
        );
    }

    #[test]
    fn durations_read_at_a_glance() {
        assert_eq!(duration(0.25), "250 ms");
        assert_eq!(duration(12.4), "12 s");
        assert_eq!(duration(300.0), "5 min");
        assert_eq!(duration(3.0 * 3600.0), "3 h");
        assert_eq!(duration(5.0 * 86_400.0), "5 d");
        assert_eq!(ago(-1.0), "0 ms", "a clock a little ahead is now");
    }

    fn order() -> OrderStatus {
        OrderStatus {
            order_by: "order_id".into(),
            on_dead_letter: "park".into(),
            parked: 0,
            oldest_parked: Vec::new(),
            held: 0,
            oldest_held_s: None,
        }
    }

    #[test]
    fn an_order_with_nothing_held_or_parked_is_one_line() {
        assert_eq!(
            order_lines(&order()),
            ["    order by order_id (a dead letter parks its key): no key parked, no event held"]
        );
        let skip = OrderStatus {
            on_dead_letter: "skip".into(),
            held: 1,
            oldest_held_s: Some(30.2),
            ..order()
        };
        assert_eq!(
            order_lines(&skip),
            [
                "    order by order_id (a dead letter skips to the next event of its key): \
              no key parked, 1 key holding events back, the oldest routed 30 s ago"
            ]
        );
    }

    #[test]
    fn parked_keys_are_listed_oldest_first_escaped_with_their_dead_letter() {
        let parked = OrderStatus {
            parked: 7,
            oldest_parked: vec![
                status::ParkedKey {
                    key: "o-1".into(),
                    key_cut: false,
                    parked_at: 0.0,
                    age_s: 180.0,
                    dead_letter: Some("1765-0".into()),
                },
                status::ParkedKey {
                    key: "o-\u{1b}[31m2".into(),
                    key_cut: true,
                    parked_at: 0.0,
                    age_s: 12.0,
                    dead_letter: None,
                },
            ],
            held: 3,
            oldest_held_s: Some(0.25),
            ..order()
        };
        let lines = order_lines(&parked);
        assert_eq!(
            lines[0],
            "    order by order_id (a dead letter parks its key): 7 keys PARKED (each waits for \
             `eventhost dlq replay` or `eventhost dlq skip` of its dead letter), 3 keys holding \
             events back, the oldest routed 250 ms ago"
        );
        assert_eq!(lines[1], "      parked 3 min ago: o-1 (dead letter 1765-0)");
        assert!(!lines[2].contains('\u{1b}'), "{}", lines[2]);
        assert!(lines[2].starts_with("      parked 12 s ago: o-") && lines[2].ends_with('…'));
        assert_eq!(lines[3], "      and 5 more parked keys");
        assert_eq!(lines.len(), 4);
    }
}
