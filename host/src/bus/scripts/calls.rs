//! What one script call may carry, and what Redis's refusal of one
//! means: shared by the encoders that split a batch over several calls.

use redis::RedisError;

/// Most argument bytes sent in one script call. Redis buffers a call whole
/// (and closes a connection whose query passes 1 GiB), and runs it without
/// serving anyone else: a larger batch is committed in several calls, each
/// atomic per entry, records never split.
pub const MAX_CALL_BYTES: usize = 64 << 20;

/// How many of `records` go in the next script call: as many as fit in
/// [`MAX_CALL_BYTES`] of arguments, and at least one (a record over it
/// goes alone, and Redis says whether it takes it).
pub(super) fn fit_in_one_call<T>(records: &[T], bytes: impl Fn(&T) -> usize) -> usize {
    let mut total = 0;
    records
        .iter()
        .take_while(|r| {
            total += bytes(r);
            total <= MAX_CALL_BYTES
        })
        .count()
        .max(1)
}

/// Whether Redis refused a command for a reason that will not change by
/// waiting: an `ERR` or `WRONGTYPE` reply (a script error, an argument it
/// cannot take, a key of another type), not a lost connection, a full
/// memory (`OOM`), a busy or loading server, a lost group (`NOGROUP`).
pub fn is_refusal(err: &RedisError) -> bool {
    matches!(err.code(), Some("ERR" | "WRONGTYPE"))
}

/// A refusal as Redis said it (`WRONGTYPE state is a string, not a hash`),
/// for a dead letter's reason.
pub fn refusal_text(err: &RedisError) -> String {
    match (err.code(), err.detail()) {
        (Some(code), Some(detail)) => format!("{code} {detail}"),
        _ => err.to_string(),
    }
}
