//! What a failed call is reported as: the kind that decides between a
//! retry and the DLQ, and a reason with the plugin's own last words
//! (what it printed), escaped and cut so a plugin cannot flood or forge the
//! log or the DLQ with it.

use std::time::Duration;

use super::host_api::{Call, Level, StateRead, StoreData};
use super::logs;
use crate::handler::{Failure, FailureKind};

/// A state read that takes this long means Redis is struggling: a healthy
/// one answers a 1 MiB read in about a millisecond.
const SLOW_READ: Duration = Duration::from_millis(50);

/// The reasons for one build's failures.
pub(super) struct CallFailures<'a> {
    /// The plugin file as configured.
    pub plugin_file: &'a str,
    /// Its subscriber's `effects_mb`, in bytes.
    pub effects_bytes: usize,
}

impl CallFailures<'_> {
    pub(super) fn timed_out(&self, limit: Duration) -> Failure {
        Failure::new(
            FailureKind::Timeout,
            format!(
                "{} ran past its time limit of {} ms",
                self.plugin_file,
                limit.as_millis()
            ),
        )
    }

    pub(super) fn timed_out_starting(&self, limit: Duration) -> Failure {
        Failure::new(
            FailureKind::Timeout,
            format!(
                "{} ran past its time limit of {} ms while starting (in its start function, \
                 e.g. `_initialize`, before `handle`)",
                self.plugin_file,
                limit.as_millis()
            ),
        )
    }

    /// A call's buffered effects went over `effects_mb`. The call is
    /// stopped there and dead-lettered at once, as a `reject`: it will go
    /// over again on every attempt, so retrying only wastes them.
    fn over_budget(&self, what: &str) -> Failure {
        Failure::new(
            FailureKind::Reject,
            format!(
                "{} is over its budget of {} MiB of buffered effects (state writes, deletes and \
                 reads, publishes) at {what}; raise effects_mb or write less per event",
                self.plugin_file,
                self.effects_bytes >> 20
            ),
        )
    }

    /// Turns a trap into a failure that says what happened and why.
    pub(super) fn classify_trap(
        &self,
        data: &mut StoreData,
        call: &Call,
        err: wasmtime::Error,
    ) -> Failure {
        let output = data.output.drain();
        if let StateRead::Failed(message) = &call.state_read {
            return Failure::new(FailureKind::Unavailable, message.clone());
        }
        if let Some(message) = &call.host_error {
            return Failure::new(FailureKind::Host, format!("host error: {message}"));
        }
        if let Some(what) = &call.over_budget {
            return self.over_budget(what);
        }
        if call.timed_out {
            let own = call.started.elapsed().saturating_sub(call.state_wait);
            // Redis is to blame only if it was slow to answer: many quick
            // reads are the plugin's own doing, and their time its own.
            if own < call.timeout && call.longest_read >= SLOW_READ {
                return Failure::new(
                    FailureKind::Unavailable,
                    format!(
                        "Redis took {:?} of the call's {:?} to answer state reads",
                        call.state_wait, call.timeout
                    ),
                );
            }
            return self.timed_out(call.timeout);
        }
        let trap = match err.downcast_ref::<wasmtime::Trap>() {
            Some(trap) => trap.to_string(),
            None => format!("{:#}", anyhow::Error::from(err)),
        };
        let said = output_summary(&output);
        let said = if said.is_empty() {
            String::new()
        } else {
            format!("; it printed: {said}")
        };
        if data.limiter.hit {
            return Failure::new(
                FailureKind::OutOfMemory,
                format!(
                    "{} ran past its memory limit of {} MiB ({trap}){said}",
                    self.plugin_file,
                    data.limiter.limit() >> 20
                ),
            );
        }
        Failure::new(
            FailureKind::Trap,
            format!("{} trapped: {trap}{said}", self.plugin_file),
        )
    }
}

/// Longest reason a plugin's `retry` or `reject` may give, in bytes: it
/// goes into logs and every dead letter of the event.
const MAX_REASON_BYTES: usize = 4096;

/// A plugin's failure reason as the host repeats it: control characters
/// escaped (it is logged), cut at [`MAX_REASON_BYTES`].
pub(super) fn plugin_reason(message: &str) -> String {
    logs::escape(message, MAX_REASON_BYTES)
}

/// Forwards what a healthy call printed to the log, one line per line,
/// escaped and within the plugin's log limits.
pub(super) fn log_output(data: &mut StoreData) {
    let output = data.output.drain();
    for line in output.lines().filter(|l| !l.trim().is_empty()) {
        data.log_line(Level::Info, &format!("plugin output: {line}"));
    }
}

/// What a crashed plugin printed, in a few hundred characters: its first
/// and last lines, where runtimes put the error (JavaScript prints it first,
/// a Rust panic last).
fn output_summary(text: &str) -> String {
    // Rust's panic hook adds advice about RUST_BACKTRACE that only adds noise.
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("note: run with `RUST_BACKTRACE"))
        .collect();
    let picked: Vec<&str> = if lines.len() <= 4 {
        lines
    } else {
        let mut picked = lines[..2].to_vec();
        picked.push("…");
        picked.extend_from_slice(&lines[lines.len() - 2..]);
        picked
    };
    shorten(&picked.join(" | "), 600)
}

/// `text` cut in the middle to at most about `max` bytes.
fn shorten(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let head = text.floor_char_boundary(max / 2);
    let tail = text.ceil_char_boundary(text.len() - max / 2);
    format!("{} … {}", &text[..head], &text[tail..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_summaries_keep_the_first_and_last_lines() {
        assert_eq!(output_summary("a\n\nb\nc\nd\n"), "a | b | c | d");
        assert_eq!(
            output_summary("e1\ne2\nx\ny\nz\nl1\nl2"),
            "e1 | e2 | … | l1 | l2"
        );
        assert_eq!(
            output_summary("panicked at x\nnote: run with `RUST_BACKTRACE=1` for a backtrace"),
            "panicked at x"
        );
        assert_eq!(output_summary(""), "");
        let long = format!("{}{}", "é".repeat(400), "end");
        let short = output_summary(&long);
        assert!(
            short.len() <= 610 && short.ends_with("end") && short.contains(" … "),
            "{short}"
        );
    }
}
