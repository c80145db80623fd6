//! A subscriber's committed state, read from its Redis hash.

use async_trait::async_trait;
use redis::AsyncCommands;

use super::connection::RedisConn;
use crate::handler::StateReader;

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
    async fn get(&self, field: &str) -> anyhow::Result<Option<String>> {
        let mut conn = self.conn.clone();
        Ok(conn.hget(&self.key, field).await?)
    }
}
