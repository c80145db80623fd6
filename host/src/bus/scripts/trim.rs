//! Trimming a stream without losing what a group still needs (see
//! `trim.lua` for how the cut is found).

use std::sync::LazyLock;

use redis::{RedisResult, Script};

use crate::bus::connection::RedisConn;

static SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("trim.lua")));

/// Trims `stream` to about `keep` entries, never past an entry a consumer
/// group has not acknowledged or read; returns how many were removed.
pub async fn trim(conn: &mut RedisConn, stream: &str, keep: usize) -> RedisResult<u64> {
    SCRIPT.key(stream).arg(keep).invoke_async(conn).await
}
