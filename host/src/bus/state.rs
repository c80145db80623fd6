//! A subscriber's committed state, read from its Redis hash.
//!
//! A large value is read with the stamp its last write left beside it in
//! the same hash (one atomic `HMGET`), so the commit can check the read
//! without comparing the value.

use async_trait::async_trait;

use super::connection::RedisConn;
use crate::handler::{Seen, StateReader, COMPARED_BYTES};

/// The hash field holding the stamp of `key`'s value: the subscriber-stream
/// entry whose commit last wrote a large value there. NUL-led, out of the
/// way of the keys plugins choose.
pub fn stamp_field(key: &str) -> String {
    format!("{STAMP_PREFIX}{key}")
}

/// What a stamp field's name starts with (`commit.lua` knows it too).
pub const STAMP_PREFIX: &str = "\0stamp:";

/// Reads `events:state:<name>`; writes go through the commit script only.
pub struct RedisState {
    conn: RedisConn,
    key: String,
}

impl RedisState {
    /// A reader of the hash at `key`.
    pub fn new(conn: RedisConn, key: String) -> Self {
        RedisState { conn, key }
    }
}

#[async_trait]
impl StateReader for RedisState {
    async fn read(&self, field: &str) -> anyhow::Result<Seen> {
        let mut conn = self.conn.clone();
        let (value, stamp): (Option<String>, Option<String>) = redis::cmd("HMGET")
            .arg(&self.key)
            .arg(field)
            .arg(stamp_field(field))
            .query_async(&mut conn)
            .await?;
        let large = value.as_ref().is_some_and(|v| v.len() > COMPARED_BYTES);
        Ok(Seen {
            value,
            stamp: if large { stamp } else { None },
            earlier_in_batch: false,
        })
    }
}
