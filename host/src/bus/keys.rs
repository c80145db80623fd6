//! Redis key and group names, exactly as LeanMQ 0.2 spells them.
//!
//! LeanMQ names a queue `<prefix><queue>`, its DLQ `<prefix><queue>:dlq`, its
//! consumer group `<queue>-group` and the DLQ's `<queue>-group-dlq`. The bus
//! is the queue `all`; each subscriber owns the queue `sub:<name>`. Keeping
//! these names lets LeanMQ producers and DLQ tools work on our streams.

/// A LeanMQ queue pair: stream, DLQ and their groups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueKeys {
    /// `<prefix><queue>`
    pub stream: String,
    /// `<prefix><queue>:dlq`
    pub dlq: String,
    /// `<queue>-group`
    pub group: String,
    /// `<queue>-group-dlq`
    pub dlq_group: String,
}

impl QueueKeys {
    fn new(prefix: &str, queue: &str) -> Self {
        QueueKeys {
            stream: format!("{prefix}{queue}"),
            dlq: format!("{prefix}{queue}:dlq"),
            group: format!("{queue}-group"),
            dlq_group: format!("{queue}-group-dlq"),
        }
    }

    /// LeanMQ's metadata hash of a stream.
    pub fn metadata(stream: &str) -> String {
        format!("{stream}:metadata")
    }
}

/// Every key the bus uses, derived from one prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    /// Keys under `prefix` (LeanMQ's default for event buses is `events:`).
    pub fn new(prefix: impl Into<String>) -> Self {
        Keys {
            prefix: prefix.into(),
        }
    }

    /// Where producers publish: `events:all`.
    pub fn all(&self) -> QueueKeys {
        QueueKeys::new(&self.prefix, "all")
    }

    /// A subscriber's own queue: `events:sub:<name>`.
    pub fn subscriber(&self, name: &str) -> QueueKeys {
        QueueKeys::new(&self.prefix, &format!("sub:{name}"))
    }

    /// A subscriber's state hash: `events:state:<name>`.
    pub fn state(&self, name: &str) -> String {
        format!("{}state:{name}", self.prefix)
    }

    /// LeanMQ's set of every stream name.
    pub fn registry(&self) -> String {
        format!("{}registry", self.prefix)
    }

    /// The heartbeat of the host whose consumer name is `consumer`: a
    /// JSON string that expires unless the host keeps refreshing it.
    pub fn host(&self, consumer: &str) -> String {
        format!("{}host:{consumer}", self.prefix)
    }

    /// Every host's consumer name, scored by when it was last seen (ms):
    /// how `status` finds heartbeats without scanning keys, and names the
    /// hosts gone lately.
    pub fn hosts(&self) -> String {
        format!("{}hosts", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_match_leanmq() {
        let keys = Keys::new("events:");
        let all = keys.all();
        assert_eq!(all.stream, "events:all");
        assert_eq!(all.dlq, "events:all:dlq");
        assert_eq!(all.group, "all-group");
        assert_eq!(all.dlq_group, "all-group-dlq");
        let sub = keys.subscriber("payment-service");
        assert_eq!(sub.stream, "events:sub:payment-service");
        assert_eq!(sub.dlq, "events:sub:payment-service:dlq");
        assert_eq!(sub.group, "sub:payment-service-group");
        assert_eq!(sub.dlq_group, "sub:payment-service-group-dlq");
        assert_eq!(
            keys.state("payment-service"),
            "events:state:payment-service"
        );
        assert_eq!(keys.registry(), "events:registry");
        assert_eq!(keys.host("box-12"), "events:host:box-12");
        assert_eq!(keys.hosts(), "events:hosts");
        assert_eq!(
            QueueKeys::metadata(&sub.stream),
            "events:sub:payment-service:metadata"
        );
    }
}
