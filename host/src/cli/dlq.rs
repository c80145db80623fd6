//! `eventhost dlq list|show|replay|skip|purge`: the arguments, and the output
//! for a person (text) or a program (`--json`, stable field names). The
//! work is [`crate::bus::dlq`]'s.

use clap::{Args, Subcommand};
use serde_json::{json, Value};

use super::text::{escaped, shown};
use super::{connect, say, RedisArgs};
use crate::bus::dlq::{self, DeadLetter, Dlq, DlqError, Filter, Pace, Selection, Target};

/// What to do with a dead-letter queue.
#[derive(Subcommand)]
pub enum DlqCommand {
    /// List dead letters, oldest first.
    List {
        /// The subscriber (as in [subscribers.<name>]), or `all` for the
        /// bus's DLQ.
        target: String,
        #[command(flatten)]
        filter: FilterArgs,
        /// Show at most this many.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        redis: RedisArgs,
    },
    /// Show one dead letter: its payload and every failure.
    Show {
        /// The subscriber, or `all` for the bus.
        target: String,
        /// The entry's id in the DLQ, as `list` prints it.
        id: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        redis: RedisArgs,
    },
    /// Move dead letters back into the subscriber's stream (the bus's:
    /// into events:all), to be handled again from attempt 1; their failure
    /// history is kept. Interrupted at any point, nothing is lost or
    /// doubled: run it again to finish.
    Replay {
        /// The subscriber, or `all` for the bus.
        target: String,
        /// Entry ids; or --all, or filters.
        ids: Vec<String>,
        /// Every entry (with filters: every entry they select).
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        filter: FilterArgs,
        /// At most this many entries per second.
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
        rate: Option<u32>,
        /// Only say what would be replayed.
        #[arg(long)]
        dry_run: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        redis: RedisArgs,
    },
    /// Let the keys these dead letters park move on (a subscriber with
    /// `order_by` and `on_dead_letter = "park"`): each key's next event
    /// runs. The letters stay in the DLQ, to replay (as new events of their
    /// key) or purge later.
    Skip {
        /// The subscriber.
        target: String,
        /// Entry ids, as `list` prints them.
        #[arg(required = true)]
        ids: Vec<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        redis: RedisArgs,
    },
    /// Delete dead letters for good.
    Purge {
        /// The subscriber, or `all` for the bus.
        target: String,
        /// Entry ids; or --all, or filters.
        ids: Vec<String>,
        /// Every entry (with filters: every entry they select).
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        filter: FilterArgs,
        /// Yes, delete them: nothing is deleted without it.
        #[arg(long)]
        yes: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        redis: RedisArgs,
    },
}

/// Which dead letters: every option left out selects all.
#[derive(Args)]
pub struct FilterArgs {
    /// Kind of the last failure: trap, reject, retry, timeout,
    /// out-of-memory, malformed, abandoned, host-error.
    #[arg(long)]
    kind: Option<String>,
    /// Event type.
    #[arg(long = "type")]
    event_type: Option<String>,
    /// Dead-lettered at or after: a duration ago (15m, 2h, 1d), a UTC time
    /// (2026-12-01T02:00:00Z) or seconds since the epoch.
    #[arg(long)]
    since: Option<String>,
}

impl FilterArgs {
    fn filter(&self) -> Result<Filter, DlqError> {
        Filter::parse(
            self.kind.as_deref(),
            self.event_type.as_deref(),
            self.since.as_deref(),
        )
    }
}

/// Runs one `dlq` command.
pub async fn run(command: DlqCommand) -> anyhow::Result<()> {
    match command {
        DlqCommand::List {
            target,
            filter,
            limit,
            json,
            redis,
        } => {
            let mut dlq = open(&redis, &target).await?;
            let filter = filter.filter()?;
            let letters = dlq.list(&filter, limit).await?;
            let depth = dlq.depth().await?;
            if json {
                let entries: Vec<Value> = letters.iter().map(DeadLetter::to_json).collect();
                say(serde_json::to_string_pretty(&json!({
                    "dlq": dlq.queue().dlq,
                    "stream": dlq.queue().stream,
                    "depth": depth,
                    "entries": entries,
                }))?);
            } else {
                print_list(&dlq, depth, &letters, limit);
            }
        }
        DlqCommand::Show {
            target,
            id,
            json,
            redis,
        } => {
            let mut dlq = open(&redis, &target).await?;
            let Some(letter) = dlq.get(&id).await? else {
                anyhow::bail!(
                    "{id} is not in {} (replayed or purged already?); `eventhost dlq list {target}` shows what is",
                    dlq.queue().dlq
                );
            };
            if json {
                say(serde_json::to_string_pretty(&letter.to_json())?);
            } else {
                print_letter(&dlq, &letter);
            }
        }
        DlqCommand::Replay {
            target,
            ids,
            all,
            filter,
            rate,
            dry_run,
            json,
            redis,
        } => {
            let selection = Selection::new(ids, all, filter.filter()?)?;
            let mut dlq = open(&redis, &target).await?;
            let pace = Pace { per_second: rate };
            let report = dlq.replay(&selection, pace, dry_run, |_| {}).await?;
            if json {
                say(serde_json::to_string_pretty(&json!({
                    "dlq": dlq.queue().dlq,
                    "stream": dlq.queue().stream,
                    "dry_run": report.dry_run,
                    "replayed": report.moved.len(),
                    "seconds": report.seconds,
                    "entries": report.moved,
                    "missing": report.missing,
                }))?);
            } else {
                let n = report.moved.len();
                if dry_run {
                    say(format_args!(
                        "would replay {n} dead letter{} from {} into {}:",
                        plural(n),
                        dlq.queue().dlq,
                        dlq.queue().stream
                    ));
                    for moved in &report.moved {
                        say(&moved.dlq_id);
                    }
                } else {
                    let rate = if report.seconds > 0.0 {
                        format!(" ({:.0}/s)", n as f64 / report.seconds)
                    } else {
                        String::new()
                    };
                    say(format_args!(
                        "replayed {n} dead letter{} from {} into {} in {:.1} s{rate}",
                        plural(n),
                        dlq.queue().dlq,
                        dlq.queue().stream,
                        report.seconds
                    ));
                }
                if !report.missing.is_empty() {
                    say(format_args!(
                        "not in the DLQ (replayed or purged already): {}",
                        report.missing.join(", ")
                    ));
                }
            }
        }
        DlqCommand::Skip {
            target,
            ids,
            json,
            redis,
        } => {
            let mut dlq = open(&redis, &target).await?;
            let released = dlq.skip(&ids).await?;
            let not_parking: Vec<&String> =
                ids.iter().filter(|id| !released.contains(id)).collect();
            if json {
                say(serde_json::to_string_pretty(&json!({
                    "dlq": dlq.queue().dlq,
                    "released": released,
                    "not_parking": not_parking,
                }))?);
            } else {
                let n = released.len();
                say(format_args!(
                    "{n} key{} moved on past {n} dead letter{} of {} (the letters stay in the DLQ)",
                    plural(n),
                    plural(n),
                    dlq.queue().dlq
                ));
                if !not_parking.is_empty() {
                    let list: Vec<&str> = not_parking.iter().map(|s| s.as_str()).collect();
                    say(format_args!(
                        "not parking a key (not in the DLQ, skipped or replayed already, or its \
                         subscriber does not park): {}",
                        list.join(", ")
                    ));
                }
            }
        }
        DlqCommand::Purge {
            target,
            ids,
            all,
            filter,
            yes,
            json,
            redis,
        } => {
            let selection = Selection::new(ids, all, filter.filter()?)?;
            let mut dlq = open(&redis, &target).await?;
            if !yes {
                let n = dlq.count(&selection).await?;
                anyhow::bail!(
                    "this deletes {n} dead letter{} from {} for good; add --yes to do it",
                    plural(n),
                    dlq.queue().dlq
                );
            }
            let deleted = dlq.purge(&selection).await?;
            if json {
                say(serde_json::to_string_pretty(&json!({
                    "dlq": dlq.queue().dlq,
                    "purged": deleted,
                }))?);
            } else {
                say(format_args!(
                    "purged {deleted} dead letter{} from {}",
                    plural(deleted as usize),
                    dlq.queue().dlq
                ));
            }
        }
    }
    Ok(())
}

/// The DLQ of `target` on the configured bus.
async fn open(redis: &RedisArgs, target: &str) -> anyhow::Result<Dlq> {
    let target = Target::parse(target)?;
    let bus = connect(redis).await?;
    if let (Target::Subscriber(name), Some(config)) = (&target, &bus.config) {
        if !config.subscribers.iter().any(|s| &s.name == name) {
            tracing::warn!(
                subscriber = %name,
                "{} has no [subscribers.{name}]; looking at its DLQ anyway",
                config.path.display()
            );
        }
    }
    Ok(Dlq::new(bus.conn, &bus.keys, target)?)
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

fn print_list(dlq: &Dlq, depth: u64, letters: &[DeadLetter], limit: usize) {
    say(format_args!(
        "{}: {depth} dead letter{}{}",
        dlq.queue().dlq,
        plural(depth as usize),
        if letters.len() as u64 == depth {
            String::new()
        } else if letters.len() == limit {
            format!(", first {} shown (--limit)", letters.len())
        } else {
            format!(", {} selected", letters.len())
        }
    ));
    if letters.is_empty() {
        return;
    }
    let rows: Vec<[String; 6]> = letters
        .iter()
        .map(|l| {
            let last = l.last_failure();
            [
                l.id.clone(),
                dlq::time_text(l.dead_lettered_ms as f64 / 1000.0),
                escaped(l.event_type.as_deref().unwrap_or("-")),
                l.kind().unwrap_or("-").to_string(),
                last.and_then(|f| f.attempt)
                    .map_or("-".into(), |a| a.to_string()),
                shown(last.map_or("", |f| f.reason.as_str()), 100),
            ]
        })
        .collect();
    let head = ["ID", "DEAD-LETTERED", "TYPE", "KIND", "ATTEMPT", "REASON"];
    let mut widths = head.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &[String]| {
        let mut text = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                text.push_str(cell);
            } else {
                text.push_str(&format!("{cell:<width$}  ", width = widths[i]));
            }
        }
        text
    };
    say(line(&head.map(String::from)));
    for row in &rows {
        say(line(row));
    }
}

fn print_letter(dlq: &Dlq, letter: &DeadLetter) {
    say(format_args!(
        "id:            {} in {}",
        letter.id,
        dlq.queue().dlq
    ));
    say(format_args!(
        "dead-lettered: {}",
        dlq::time_text(letter.dead_lettered_ms as f64 / 1000.0)
    ));
    say(format_args!(
        "event:         {} {}",
        escaped(letter.event_type.as_deref().unwrap_or("(no event_type)")),
        escaped(letter.event_id.as_deref().unwrap_or("(no event_id)"))
    ));
    say(format_args!("failures:      {}", letter.failures.len()));
    for (i, f) in letter.failures.iter().enumerate() {
        say(format_args!(
            "  {}. {}  {}  attempt {}  {}",
            i + 1,
            f.timestamp.map_or("-".into(), dlq::time_text),
            f.kind.as_deref().unwrap_or("-"),
            f.attempt.map_or("-".into(), |a| a.to_string()),
            escaped(&f.reason)
        ));
    }
    say("data:");
    // JSON escapes control characters itself.
    say(serde_json::to_string_pretty(&letter.payload()).unwrap_or_default());
}
