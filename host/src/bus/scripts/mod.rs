//! The bus's atomic writes, as Lua scripts beside their Rust encoders.
//!
//! A MULTI/EXEC cannot make a write depend on whether an `XACK` found its
//! entry still pending; a script can. So the fan-out ([`fanout`]) and a
//! subscriber's commit ([`commit`]) acknowledge each entry first and write
//! its copies, effects or dead letter only if that acknowledgement counted:
//! an entry handled twice (a slow consumer and the one that reclaimed its
//! work) is committed once. On a Redis Cluster the fan-out's copies live on
//! other shards than the entry they copy: [`copy`] makes a repeated copy
//! harmless instead. [`trim`] bounds streams without cutting what a
//! group still needs. [`replay`] moves dead letters back into their
//! stream, each entry in one step, so a replay cut short neither loses nor
//! doubles one. [`tick`] publishes a schedule's tick once across hosts.
//! [`peek`], the one that writes nothing, reads a page of a
//! DLQ for the console's list as ids, sizes and the ends of each payload,
//! within a byte budget. Each write is tested against a real redis-server
//! in `tests/scripts.rs`; `peek` by the console's list in
//! `tests/console.rs`.

mod calls;
pub mod commit;
pub mod copy;
pub mod fanout;
pub mod later;
mod order;
pub mod peek;
pub mod replay;
pub mod tick;
pub mod trim;

pub use calls::{is_refusal, MAX_CALL_BYTES};
pub use commit::{CommitBatch, CommitKeys, Committed};
pub use copy::{Copied, CopyBatch};
pub use fanout::{FanoutBatch, FanoutKeys, Routed, Target};
pub use peek::{peek, Peek, PeekRange, Peeked};
pub use replay::{replay, skip, Letter, Moved, ReplayKeys};
pub use trim::trim;

/// Entries of a batch that were already acknowledged by someone else, so
/// nothing of theirs was written.
pub type Skipped = u64;

/// A script's arguments as text, for tests of the encoders.
#[cfg(test)]
fn text(args: &[Vec<u8>]) -> Vec<String> {
    args.iter()
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}
