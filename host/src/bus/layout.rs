//! Creating the streams, groups and LeanMQ bookkeeping a queue needs.
//!
//! Groups start at `0`, not `$`: every entry already in a stream when its
//! group is first created is delivered, so an event published before the
//! host ever ran is not missed (the README's "every event reaches every
//! subscriber of its type"). Creation is idempotent, and is repeated
//! whenever Redis says a group is gone.

use redis::aio::ConnectionLike;

use super::keys::{Keys, QueueKeys};

/// Makes sure `queue`'s stream, DLQ, groups, metadata and registry entries
/// exist, as LeanMQ's `create_queue_pair` would leave them.
pub async fn ensure_queue<C: ConnectionLike + Send>(
    conn: &mut C,
    keys: &Keys,
    queue: &QueueKeys,
) -> redis::RedisResult<()> {
    create_group(conn, &queue.stream, &queue.group).await?;
    create_group(conn, &queue.dlq, &queue.dlq_group).await?;

    let now = crate::handler::unix_now().to_string();
    let main_meta = QueueKeys::metadata(&queue.stream);
    let dlq_meta = QueueKeys::metadata(&queue.dlq);
    redis::pipe()
        .sadd(keys.registry(), &[&queue.stream, &queue.dlq])
        .ignore()
        .hset_nx(&main_meta, "created_at", &now)
        .ignore()
        .hset_multiple(
            &main_meta,
            &[
                ("dlq", queue.dlq.as_str()),
                ("consumer_group", &queue.group),
            ],
        )
        .ignore()
        .hset_nx(&dlq_meta, "created_at", &now)
        .ignore()
        .hset_multiple(
            &dlq_meta,
            &[
                ("main_queue", queue.stream.as_str()),
                ("consumer_group", &queue.dlq_group),
                ("is_dlq", "true"),
            ],
        )
        .ignore()
        .query_async::<()>(conn)
        .await
}

async fn create_group<C: ConnectionLike + Send>(
    conn: &mut C,
    stream: &str,
    group: &str,
) -> redis::RedisResult<()> {
    let created: redis::RedisResult<()> = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(stream)
        .arg(group)
        .arg("0")
        .arg("MKSTREAM")
        .query_async(conn)
        .await;
    match created {
        Err(err) if err.code() == Some("BUSYGROUP") => Ok(()),
        other => other,
    }
}
