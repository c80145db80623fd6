//! Redis key and group names: LeanMQ 0.2's on one server, hash-tagged on a
//! Redis Cluster.
//!
//! LeanMQ names a queue `<prefix><queue>`, its DLQ `<prefix><queue>:dlq`, its
//! consumer group `<queue>-group` and the DLQ's `<queue>-group-dlq`. The bus
//! is the queue `all`; each subscriber owns the queue `sub:<name>`. Keeping
//! these names lets LeanMQ producers and DLQ tools work on our streams.
//!
//! A cluster runs a script only on keys of one hash slot, so there every key
//! a subscriber's commit touches carries the tag `{<name>}`
//! (`events:sub:{pay}`, `events:state:{pay}`, `events:outbox:{pay}`, ...),
//! and the ingress is split into partitions, each tagged to land in its own
//! share of the slots (`events:all:{p0.17}`, ...), so they spread over the
//! shards.

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

/// Where a subscriber with `order_by` keeps each key's order: of the
/// events of one key, only the oldest (the key's holder) is in the
/// subscriber's stream; the others wait in the key's list until the
/// holder is committed or dead-lettered (see `scripts/order.lua`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderKeys {
    /// `events:order:<name>`: what each key's list is named after (no key
    /// of its own).
    pub lists: String,
    /// `events:order:<name>:held`, a sorted set: each key with events
    /// waiting behind its holder → when (ms) the oldest of them was routed.
    pub held: String,
    /// `events:order:<name>:parked`, a sorted set: each parked key → when
    /// (ms) it was parked.
    pub parked: String,
}

impl OrderKeys {
    /// The list of `key`: its holder, then its waiting events, oldest
    /// first, each `<ms routed> <data>`; the holder is `park:<dlq id>`
    /// while a dead letter parks the key: `events:order:<name>:q:<key>`.
    pub fn list(&self, key: &str) -> String {
        Self::list_of(&self.lists, key)
    }

    /// [`OrderKeys::list`], from [`OrderKeys::lists`] alone.
    pub fn list_of(lists: &str, key: &str) -> String {
        format!("{lists}:q:{key}")
    }
}

/// A schedule's keys (see [`Keys::schedule`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduleKeys {
    /// A hash: its last tick (`tick`, ms since the epoch) and what became
    /// of it.
    pub state: String,
    /// The ingress stream its events go to.
    pub ingress: QueueKeys,
}

/// Every key the bus uses, derived from one prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    prefix: String,
    /// On a Redis Cluster: the number of ingress partitions.
    cluster: Option<usize>,
}

/// Slots of a Redis Cluster.
const SLOTS: usize = 16384;

impl Keys {
    /// LeanMQ's keys under `prefix` (its default for event buses is
    /// `events:`), on one server.
    pub fn new(prefix: impl Into<String>) -> Self {
        Keys {
            prefix: prefix.into(),
            cluster: None,
        }
    }

    /// Hash-tagged keys under `prefix`, on a Redis Cluster, with
    /// `partitions` ingress streams.
    pub fn cluster(prefix: impl Into<String>, partitions: usize) -> Self {
        Keys {
            prefix: prefix.into(),
            cluster: Some(partitions.max(1)),
        }
    }

    /// Whether these are a Redis Cluster's keys.
    pub fn is_cluster(&self) -> bool {
        self.cluster.is_some()
    }

    /// Where producers publish on one server: `events:all`.
    pub fn all(&self) -> QueueKeys {
        QueueKeys::new(&self.prefix, "all")
    }

    /// Every ingress stream the fan-out reads: `events:all` on one server,
    /// the partitions on a cluster.
    pub fn ingress(&self) -> Vec<QueueKeys> {
        match self.cluster {
            None => vec![self.all()],
            Some(n) => (0..n).map(|i| self.partition(i, n)).collect(),
        }
    }

    /// The ingress stream for an event with `event_id`: a partition chosen
    /// by the CRC-32 of the id (zlib's, which every language has), so a
    /// producer that publishes one event twice reaches one partition.
    pub fn ingress_for(&self, event_id: &str) -> QueueKeys {
        match self.cluster {
            None => self.all(),
            Some(n) => {
                let i = crc32fast::hash(event_id.as_bytes()) as usize % n;
                self.partition(i, n)
            }
        }
    }

    /// Partition `i` of `n`: `events:all:{p<i>.<k>}`, `k` the first number
    /// that puts its slot in the middle of the `i`-th of `n` equal shares of
    /// the slots. A cluster split evenly over `s` shards (as `redis-cli
    /// --cluster create` splits it) then gets `n / s` partitions each when
    /// `s` divides `n`.
    fn partition(&self, i: usize, n: usize) -> QueueKeys {
        let share = SLOTS as f64 / n as f64;
        let low = (share * (i as f64 + 0.25)) as usize;
        let high = ((share * (i as f64 + 0.75)) as usize).max(low + 1);
        let tag = (0u32..)
            .map(|k| format!("p{i}.{k}"))
            .find(|tag| (low..high).contains(&slot(tag)))
            .expect("some tag lands in every range of slots");
        let mut queue = QueueKeys::new(&self.prefix, &format!("all:{{{tag}}}"));
        queue.group = "all-group".into();
        queue.dlq_group = "all-group-dlq".into();
        queue
    }

    /// A subscriber's own queue: `events:sub:<name>` (cluster:
    /// `events:sub:{<name>}`).
    pub fn subscriber(&self, name: &str) -> QueueKeys {
        let mut queue = QueueKeys::new(&self.prefix, &format!("sub:{}", self.tag(name)));
        queue.group = format!("sub:{name}-group");
        queue.dlq_group = format!("sub:{name}-group-dlq");
        queue
    }

    /// The subscriber whose stream is `stream`, if it is one.
    pub fn subscriber_of(&self, stream: &str) -> Option<String> {
        let name = stream.strip_prefix(&format!("{}sub:", self.prefix))?;
        if name.ends_with(":dlq") || name.ends_with(":metadata") || name.ends_with(":http") {
            return None;
        }
        match self.cluster {
            None => Some(name.to_string()),
            Some(_) => name
                .strip_prefix('{')
                .and_then(|n| n.strip_suffix('}'))
                .map(str::to_string),
        }
    }

    /// Where a subscriber's commits queue the requests its calls asked to
    /// send after the commit: `events:sub:<name>:http` (cluster:
    /// `events:sub:{<name>}:http`, in its slot), read by the sender in
    /// group `sub:<name>-group-http`; its failures go to the subscriber's
    /// DLQ.
    pub fn requests(&self, name: &str) -> QueueKeys {
        // The subscriber loop derives the same name from its stream.
        let subscriber = self.subscriber(name);
        let mut queue = QueueKeys::new(&self.prefix, &format!("sub:{}:http", self.tag(name)));
        queue.group = format!("sub:{name}-group-http");
        queue.dlq = subscriber.dlq;
        queue.dlq_group = subscriber.dlq_group;
        queue
    }

    /// A subscriber's state hash: `events:state:<name>` (cluster:
    /// `events:state:{<name>}`).
    pub fn state(&self, name: &str) -> String {
        format!("{}state:{}", self.prefix, self.tag(name))
    }

    /// On a cluster, where a subscriber's commit puts the events it
    /// publishes (`events:outbox:{<name>}`, in its slot), to be relayed to
    /// the ingress; on one server they go straight to `events:all`.
    pub fn outbox(&self, name: &str) -> Option<QueueKeys> {
        self.cluster?;
        let mut queue = QueueKeys::new(&self.prefix, &format!("outbox:{}", self.tag(name)));
        queue.group = "outbox-group".into();
        queue.dlq_group = "outbox-group-dlq".into();
        Some(queue)
    }

    /// On a cluster, the events copied to a subscriber lately, by id: a
    /// copy repeated after a crash is dropped (`events:seen:{<name>}`).
    pub fn seen(&self, name: &str) -> String {
        format!("{}seen:{}", self.prefix, self.tag(name))
    }

    /// The keys that keep a subscriber's events in order per key (its
    /// `order_by`), all in its slot.
    pub fn order(&self, name: &str) -> OrderKeys {
        let lists = format!("{}order:{}", self.prefix, self.tag(name));
        OrderKeys {
            held: format!("{lists}:held"),
            parked: format!("{lists}:parked"),
            lists,
        }
    }

    /// Where schedule `name` publishes its ticks, and the hash that
    /// remembers its last tick: `events:all` and `events:schedule:<name>`
    /// on one server; on a cluster, the partition its name picks and
    /// `events:schedule:{<that partition's tag>}:<name>`, in one slot, so
    /// the script that publishes a tick once touches one shard.
    pub fn schedule(&self, name: &str) -> ScheduleKeys {
        let ingress = self.ingress_for(&format!("schedule:{name}"));
        let state = match self.cluster {
            None => format!("{}schedule:{name}", self.prefix),
            Some(_) => {
                let tag = ingress
                    .stream
                    .find('{')
                    .map_or("", |open| &ingress.stream[open..]);
                format!("{}schedule:{tag}:{name}", self.prefix)
            }
        };
        ScheduleKeys { state, ingress }
    }

    /// `name`, as a hash tag on a cluster.
    fn tag(&self, name: &str) -> String {
        match self.cluster {
            None => name.to_string(),
            Some(_) => format!("{{{name}}}"),
        }
    }

    /// On a cluster: the number of ingress partitions the bus was set up
    /// with, which every host and producer must use.
    pub fn partitions(&self) -> String {
        format!("{}partitions", self.prefix)
    }

    /// LeanMQ's set of every stream name.
    pub fn registry(&self) -> String {
        format!("{}registry", self.prefix)
    }

    /// The heartbeat of the host whose consumer name is `consumer`: a
    /// JSON string that expires unless the host keeps refreshing it.
    pub fn host(&self, consumer: &str) -> String {
        match self.cluster {
            None => format!("{}host:{consumer}", self.prefix),
            // One slot with `hosts`, so a beat stays one pipeline.
            Some(_) => format!("{}{{hosts}}:host:{consumer}", self.prefix),
        }
    }

    /// Every host's consumer name, scored by when it was last seen (ms):
    /// how `status` finds heartbeats without scanning keys, and names the
    /// hosts gone lately.
    pub fn hosts(&self) -> String {
        match self.cluster {
            None => format!("{}hosts", self.prefix),
            Some(_) => format!("{}{{hosts}}", self.prefix),
        }
    }
}

/// The Redis Cluster slot of `key`: CRC-16 (XMODEM) of its hash tag (the
/// text in its first `{...}`, if not empty), else of the whole key.
pub fn slot(key: &str) -> usize {
    let bytes = key.as_bytes();
    let hashed = key
        .find('{')
        .and_then(|open| {
            let close = key[open + 1..].find('}')?;
            (close > 0).then(|| &bytes[open + 1..open + 1 + close])
        })
        .unwrap_or(bytes);
    crc16::State::<crc16::XMODEM>::calculate(hashed) as usize % SLOTS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_subscribers_requests_are_its_stream_and_http_in_its_slot() {
        for keys in [Keys::new("events:"), Keys::cluster("events:", 4)] {
            let requests = keys.requests("pay");
            let subscriber = keys.subscriber("pay");
            assert_eq!(requests.stream, format!("{}:http", subscriber.stream));
            assert_eq!(
                requests.dlq, subscriber.dlq,
                "its failures are the subscriber's"
            );
            assert_eq!(keys.subscriber_of(&requests.stream), None);
        }
        assert_eq!(
            slot(&Keys::cluster("events:", 4).requests("pay").stream),
            slot("events:state:{pay}")
        );
    }

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
        assert_eq!(keys.ingress(), [keys.all()]);
        assert_eq!(keys.ingress_for("any"), keys.all());
        assert_eq!(keys.outbox("pay"), None);
        let order = keys.order("pay");
        assert_eq!(order.held, "events:order:pay:held");
        assert_eq!(order.parked, "events:order:pay:parked");
        assert_eq!(order.list("o-1"), "events:order:pay:q:o-1");
        assert_eq!(keys.subscriber_of("events:sub:pay").as_deref(), Some("pay"));
        assert_eq!(keys.subscriber_of("events:sub:pay:dlq"), None);
    }

    #[test]
    fn a_subscribers_cluster_keys_share_one_slot() {
        let keys = Keys::cluster("events:", 6);
        let sub = keys.subscriber("pay");
        assert_eq!(sub.stream, "events:sub:{pay}");
        assert_eq!(sub.group, "sub:pay-group");
        let outbox = keys.outbox("pay").unwrap();
        let all = [
            sub.stream.clone(),
            sub.dlq.clone(),
            QueueKeys::metadata(&sub.stream),
            QueueKeys::metadata(&sub.dlq),
            keys.state("pay"),
            outbox.stream,
            keys.seen("pay"),
            keys.order("pay").held,
            keys.order("pay").parked,
            keys.order("pay").list("order-{7}"),
        ];
        assert!(all.iter().all(|k| slot(k) == slot("pay")), "{all:?}");
        assert_eq!(keys.subscriber_of(&sub.stream).as_deref(), Some("pay"));
        assert_eq!(keys.subscriber_of(&sub.dlq), None);
        assert_eq!(slot(&keys.host("box-1")), slot(&keys.hosts()));
    }

    #[test]
    fn a_schedules_state_shares_the_slot_of_its_ingress() {
        let one = Keys::new("events:").schedule("nightly");
        assert_eq!(one.state, "events:schedule:nightly");
        assert_eq!(one.ingress, Keys::new("events:").all());
        let keys = Keys::cluster("events:", 6);
        for name in ["nightly", "beat", "a.b"] {
            let schedule = keys.schedule(name);
            assert!(keys.ingress().contains(&schedule.ingress));
            assert_eq!(slot(&schedule.state), slot(&schedule.ingress.stream));
            assert!(
                schedule.state.starts_with("events:schedule:{p"),
                "{schedule:?}"
            );
            assert!(
                schedule.state.ends_with(&format!("}}:{name}")),
                "{schedule:?}"
            );
        }
    }

    #[test]
    fn partitions_spread_over_evenly_split_shards() {
        // The slot of a key, as Redis computes it (CLUSTER KEYSLOT).
        assert_eq!(slot("foo"), 12182);
        assert_eq!(slot("{user1000}.following"), slot("{user1000}.followers"));
        assert_eq!(slot("foo{}{bar}"), slot("foo{}{bar}"));
        for (n, shards) in [(6, 3), (6, 2), (12, 3), (4, 4), (3, 3)] {
            let keys = Keys::cluster("events:", n);
            let mut per_shard = vec![0; shards];
            for p in keys.ingress() {
                assert_eq!(slot(&p.stream), slot(&p.dlq));
                assert_eq!(p.group, "all-group");
                per_shard[slot(&p.stream) * shards / SLOTS] += 1;
            }
            assert_eq!(per_shard, vec![n / shards; shards], "{n} partitions");
        }
        let keys = Keys::cluster("events:", 6);
        let p = keys.ingress_for("order-1");
        assert!(keys.ingress().contains(&p));
        assert_eq!(keys.ingress_for("order-1"), p);
    }
}
