//! What waits in a stream's schedule (see `scripts/later.lua`): a
//! subscriber's retries, or the events published for later to an ingress.

use redis::RedisResult;
use serde::Serialize;

use crate::bus::connection::RedisConn;
use crate::bus::scripts::later::schedule_of;

/// How much waits in the schedule of a stream, and when the next is due.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct ScheduleCounts {
    /// Entries waiting.
    pub scheduled: u64,
    /// When the next is due, in seconds since the epoch (Redis's clock).
    pub next_due: Option<f64>,
}

impl ScheduleCounts {
    /// Two streams' schedules as one: counts summed, the sooner due.
    pub fn and(self, other: ScheduleCounts) -> ScheduleCounts {
        let next_due = match (self.next_due, other.next_due) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        ScheduleCounts {
            scheduled: self.scheduled + other.scheduled,
            next_due,
        }
    }
}

/// The schedule of `stream`: one round trip, two cheap reads (never a
/// scan, whatever waits).
pub async fn schedule_counts(conn: &mut RedisConn, stream: &str) -> RedisResult<ScheduleCounts> {
    let schedule = schedule_of(stream);
    let (scheduled, first): (u64, Vec<(Vec<u8>, f64)>) = redis::pipe()
        .cmd("ZCARD")
        .arg(&schedule)
        .cmd("ZRANGE")
        .arg(&schedule)
        .arg(0)
        .arg(0)
        .arg("WITHSCORES")
        .query_async(conn)
        .await?;
    Ok(ScheduleCounts {
        scheduled,
        next_due: first.first().map(|(_, ms)| ms / 1000.0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_schedules_add_up_to_the_sooner_due() {
        let a = ScheduleCounts {
            scheduled: 2,
            next_due: Some(20.0),
        };
        let b = ScheduleCounts {
            scheduled: 3,
            next_due: Some(10.0),
        };
        let none = ScheduleCounts::default();
        assert_eq!(
            a.and(b),
            ScheduleCounts {
                scheduled: 5,
                next_due: Some(10.0)
            }
        );
        assert_eq!(a.and(none), a);
        assert_eq!(none.and(none), none);
    }
}
