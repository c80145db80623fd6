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
    // The registry has a slot of its own on a cluster: not in the pipeline
    // of the queue's keys.
    redis::cmd("SADD")
        .arg(keys.registry())
        .arg(&[&queue.stream, &queue.dlq])
        .query_async::<()>(conn)
        .await?;
    redis::pipe()
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

/// On a cluster: records how many ingress partitions the bus has, or
/// refuses to start if it was set up with another number. Producers spread
/// events by that number: a host reading fewer partitions would leave
/// events in the others unread.
pub async fn agree_on_partitions<C: ConnectionLike + Send>(
    conn: &mut C,
    keys: &Keys,
    partitions: usize,
) -> anyhow::Result<()> {
    let key = keys.partitions();
    let _: () = redis::cmd("SET")
        .arg(&key)
        .arg(partitions)
        .arg("NX")
        .query_async(conn)
        .await?;
    let recorded: usize = redis::cmd("GET").arg(&key).query_async(conn).await?;
    anyhow::ensure!(
        recorded == partitions,
        "the bus was set up with [bus] partitions = {recorded} ({key}), and this config says \
         {partitions}: every host and producer must agree; set {recorded}, or drain the bus and \
         delete {key} to change it"
    );
    Ok(())
}

/// Makes sure `stream` and its `group` exist, without LeanMQ's
/// bookkeeping: for the streams that are no LeanMQ queue (a subscriber's
/// `:http` stream, whose DLQ is the subscriber's).
pub async fn ensure_group<C: ConnectionLike + Send>(
    conn: &mut C,
    stream: &str,
    group: &str,
) -> redis::RedisResult<()> {
    create_group(conn, stream, group).await
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
