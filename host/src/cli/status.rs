//! `eventhost status`: the bus as Redis tells it ([`crate::bus::status`]),
//! as text for a person or JSON (`--json`) for a program.
//!
//! Every text in it comes from Redis, which anyone who can publish can
//! write: in the text form each is [escaped](super::text) (no control
//! character reaches the terminal) and cut by characters.

use super::text::{first_chars, shown};
use super::{connect, say, RedisArgs};
use crate::bus::status::{self, QueueStatus, Status};

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
    let configured: Vec<String> = bus
        .config
        .as_ref()
        .map(|c| c.subscribers.iter().map(|s| s.name.clone()).collect())
        .unwrap_or_default();
    let status = status::read(&mut bus.conn, &bus.keys, &configured)
        .await
        .map_err(|err| anyhow::anyhow!("cannot read the bus's status: {err}"))?;
    if json {
        say(serde_json::to_string_pretty(&status)?);
    } else {
        print(&status);
    }
    Ok(())
}

fn print(status: &Status) {
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
        let after = &s.after_commit;
        if after.queued > 0 || after.sent_per_s > 0.0 || after.dead_lettered_per_s > 0.0 {
            say(format_args!(
                "    after-commit requests: {} queued, {} being sent, {:.1}/s sent, {:.1}/s \
                 dead-lettered (kind http, in its dlq)",
                after.queued, after.sending, after.sent_per_s, after.dead_lettered_per_s
            ));
        }
    }
    if let Some(note) = not_read {
        say(note);
    }
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
    fn durations_read_at_a_glance() {
        assert_eq!(duration(0.25), "250 ms");
        assert_eq!(duration(12.4), "12 s");
        assert_eq!(duration(300.0), "5 min");
        assert_eq!(duration(3.0 * 3600.0), "3 h");
        assert_eq!(duration(5.0 * 86_400.0), "5 d");
        assert_eq!(ago(-1.0), "0 ms", "a clock a little ahead is now");
    }
}
