//! A Redis Cluster of the test's own: `redis-server --cluster-enabled yes`
//! processes on free loopback ports, joined by `redis-cli --cluster create`,
//! stopped when dropped; and a world whose config runs eventhost on it.

use std::fs;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use redis::cluster::{ClusterClient, ClusterConnection};
use redis::Commands;
use serde_json::Value;

use super::{cache_dir, eventually, free_port, plugins, Host};

/// How long a master may be unreachable before its replica replaces it.
/// Long enough that a busy 2-core machine (compiling, or a test's load)
/// does not fail a master over by accident; short enough for a test.
pub const NODE_TIMEOUT_MS: u64 = 5000;

/// One node: a `redis-server` in cluster mode.
struct Node {
    port: u16,
    child: Option<Child>,
}

/// A cluster of `masters` masters with `replicas` replicas each.
pub struct Cluster {
    nodes: Vec<Node>,
    dir: tempfile::TempDir,
}

impl Cluster {
    /// Starts the nodes, joins them, and waits until every slot is served
    /// and every replica is in sync.
    pub fn start(masters: usize, replicas: usize) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let mut cluster = Cluster {
            nodes: Vec::new(),
            dir,
        };
        for _ in 0..masters * (1 + replicas) {
            let port = free_port();
            let mut node = Node { port, child: None };
            cluster.launch(&mut node);
            cluster.nodes.push(node);
        }
        if masters < 3 {
            // redis-cli creates clusters of 3 masters or more; a smaller
            // one (to measure one shard against three) is joined by hand.
            assert_eq!(
                replicas, 0,
                "a cluster of fewer than 3 masters has no replicas here"
            );
            cluster.join_by_hand();
            cluster.wait_ready(0);
            return cluster;
        }
        let mut create = Command::new("redis-cli");
        create.arg("--cluster").arg("create");
        for node in &cluster.nodes {
            create.arg(format!("127.0.0.1:{}", node.port));
        }
        let out = create
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .expect("redis-cli must be installed: apt-get install -y redis-server");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        cluster.wait_ready(masters * replicas);
        cluster
    }

    /// Introduces every node to the first and gives each an equal range
    /// of the slots.
    fn join_by_hand(&self) {
        let share = 16384 / self.nodes.len();
        for (i, node) in self.nodes.iter().enumerate() {
            let mut conn = node_conn(node.port).unwrap();
            let first = self.nodes[0].port;
            if node.port != first {
                let _: () = redis::cmd("CLUSTER")
                    .arg("MEET")
                    .arg("127.0.0.1")
                    .arg(first)
                    .query(&mut conn)
                    .unwrap();
            }
            let high = if i + 1 == self.nodes.len() {
                16383
            } else {
                (i + 1) * share - 1
            };
            let _: () = redis::cmd("CLUSTER")
                .arg("ADDSLOTSRANGE")
                .arg(i * share)
                .arg(high)
                .query(&mut conn)
                .unwrap();
        }
    }

    fn launch(&self, node: &mut Node) {
        let dir = self.dir.path().join(node.port.to_string());
        fs::create_dir_all(&dir).unwrap();
        let child = Command::new("redis-server")
            .args(["--port", &node.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .args(["--cluster-enabled", "yes"])
            .args(["--cluster-config-file", "nodes.conf"])
            .args(["--cluster-node-timeout", &NODE_TIMEOUT_MS.to_string()])
            .arg("--dir")
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed: apt-get install -y redis-server");
        node.child = Some(child);
        let url = format!("redis://127.0.0.1:{}", node.port);
        eventually("a cluster node answers", Duration::from_secs(10), || {
            redis::Client::open(url.as_str())
                .and_then(|c| c.get_connection())
                .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c))
                .is_ok()
        });
    }

    /// Waits until every live node says the cluster is ok and `replicas`
    /// replicas are linked to their masters.
    pub fn wait_ready(&self, replicas: usize) {
        eventually(
            "the cluster serves every slot, replicas in sync",
            Duration::from_secs(60),
            || {
                let mut linked = 0;
                for node in self.nodes.iter().filter(|n| n.child.is_some()) {
                    let Some(mut conn) = node_conn(node.port) else {
                        return false;
                    };
                    let info: String = redis::cmd("CLUSTER")
                        .arg("INFO")
                        .query(&mut conn)
                        .unwrap_or_default();
                    if !info.contains("cluster_state:ok") {
                        return false;
                    }
                    let repl: String = redis::cmd("INFO")
                        .arg("replication")
                        .query(&mut conn)
                        .unwrap_or_default();
                    if repl.contains("role:slave") && repl.contains("master_link_status:up") {
                        linked += 1;
                    }
                }
                linked >= replicas
            },
        );
    }

    /// The URLs of every node: the seeds a config names.
    pub fn seeds(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| format!("redis://127.0.0.1:{}", n.port))
            .collect()
    }

    /// A fresh synchronous cluster connection.
    pub fn conn(&self) -> ClusterConnection {
        let live = self
            .nodes
            .iter()
            .filter(|n| n.child.is_some())
            .map(|n| format!("redis://127.0.0.1:{}", n.port));
        ClusterClient::new(live.collect::<Vec<_>>())
            .unwrap()
            .get_connection()
            .unwrap()
    }

    /// The port of the master that serves `key` now.
    pub fn master_of(&self, key: &str) -> u16 {
        let slot: u16 = {
            let mut conn = node_conn(self.live_port()).unwrap();
            redis::cmd("CLUSTER")
                .arg("KEYSLOT")
                .arg(key)
                .query(&mut conn)
                .unwrap()
        };
        let mut conn = node_conn(self.live_port()).unwrap();
        let shards: Vec<redis::Value> =
            redis::cmd("CLUSTER").arg("SLOTS").query(&mut conn).unwrap();
        for shard in shards {
            let redis::Value::Array(parts) = shard else {
                continue;
            };
            let (
                Some(redis::Value::Int(low)),
                Some(redis::Value::Int(high)),
                Some(redis::Value::Array(master)),
            ) = (parts.first(), parts.get(1), parts.get(2))
            else {
                continue;
            };
            if (*low..=*high).contains(&(slot as i64)) {
                if let Some(redis::Value::Int(port)) = master.get(1) {
                    return *port as u16;
                }
            }
        }
        panic!("no master serves slot {slot}");
    }

    /// Kills the node on `port` at once (SIGKILL): a crash.
    pub fn kill(&mut self, port: u16) {
        let node = self.nodes.iter_mut().find(|n| n.port == port).unwrap();
        if let Some(mut child) = node.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the node on `port` again, on its data folder: it rejoins the
    /// cluster (a killed master comes back as a replica of its successor).
    pub fn restart(&mut self, port: u16) {
        let mut node = Node { port, child: None };
        self.launch(&mut node);
        let slot = self.nodes.iter_mut().find(|n| n.port == port).unwrap();
        slot.child = node.child.take();
    }

    /// Every master's `used_cpu_sys + used_cpu_user`, by port.
    pub fn cpu_seconds(&self) -> Vec<(u16, f64)> {
        self.nodes
            .iter()
            .filter(|n| n.child.is_some())
            .filter_map(|n| {
                let mut conn = node_conn(n.port)?;
                let info: String = redis::cmd("INFO").arg("cpu").query(&mut conn).ok()?;
                let field = |name: &str| -> f64 {
                    info.lines()
                        .find_map(|l| l.strip_prefix(&format!("{name}:")))
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0.0)
                };
                Some((n.port, field("used_cpu_sys") + field("used_cpu_user")))
            })
            .collect()
    }

    fn live_port(&self) -> u16 {
        self.nodes.iter().find(|n| n.child.is_some()).unwrap().port
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// A plain connection to one node.
fn node_conn(port: u16) -> Option<redis::Connection> {
    redis::Client::open(format!("redis://127.0.0.1:{port}"))
        .ok()?
        .get_connection_with_timeout(Duration::from_secs(2))
        .ok()
}

/// A folder with an `eventhost.toml` that runs on a cluster, and the
/// plugins it uses.
pub struct ClusterWorld {
    pub dir: tempfile::TempDir,
    pub cluster: Cluster,
}

impl ClusterWorld {
    /// A world on `cluster` whose config is `subscribers` under a header
    /// naming the cluster and `bus` settings (lines of `[bus]`); `plugins`
    /// copied in by name.
    pub fn new(cluster: Cluster, plugins_used: &[&str], bus: &str, subscribers: &str) -> Self {
        let world = ClusterWorld {
            dir: tempfile::tempdir().unwrap(),
            cluster,
        };
        fs::create_dir(world.dir.path().join("plugins")).unwrap();
        for p in plugins_used {
            fs::copy(plugins().join(p), world.dir.path().join("plugins").join(p)).unwrap();
        }
        world.configure("", bus, subscribers);
        world
    }

    /// Rewrites the config: `redis` lines added to `[redis]`, `bus` lines
    /// to `[bus]`, then `subscribers`.
    pub fn configure(&self, redis: &str, bus: &str, subscribers: &str) {
        self.configure_watching(false, redis, bus, subscribers);
    }

    /// The same, with hot reload on or off.
    pub fn configure_watching(&self, watch: bool, redis: &str, bus: &str, subscribers: &str) {
        let seeds: Vec<String> = self
            .cluster
            .seeds()
            .iter()
            .map(|s| format!("\"{s}\""))
            .collect();
        let text = format!(
            "[redis]\ncluster = [{}]\n{redis}\n[plugins]\ndir = \"plugins\"\nwatch = {watch}\ncache_dir = \"{}\"\n\n[bus]\nclaim_idle_ms = 2000\n{bus}\n{subscribers}",
            seeds.join(", "),
            cache_dir().display()
        );
        fs::write(self.config(), text).unwrap();
    }

    /// The config file's path.
    pub fn config(&self) -> PathBuf {
        self.dir.path().join("eventhost.toml")
    }

    /// Starts `eventhost run` on this world and waits until it serves.
    pub fn host(&self) -> Host {
        Host::serving(&self.config(), &[])
    }

    /// The same with extra environment variables.
    pub fn host_with_env(&self, env: &[(&str, &str)]) -> Host {
        Host::serving(&self.config(), env)
    }

    /// Runs the `eventhost` binary with `args` to completion, in the
    /// world's folder.
    pub fn eventhost(&self, args: &[&str]) -> std::process::Output {
        super::eventhost_in(self.dir.path(), args)
    }
}

/// The ingress partitions, in order, as a producer finds them: the names
/// the hosts registered (`events:all:{p<i>.<k>}`), sorted by `i`.
pub fn partitions(conn: &mut ClusterConnection) -> Vec<String> {
    let registry: Vec<String> = conn.smembers("events:registry").unwrap();
    let mut parts: Vec<(usize, String)> = registry
        .into_iter()
        .filter(|s| s.starts_with("events:all:{p") && !s.ends_with(":dlq"))
        .map(|s| (partition_index(&s), s))
        .collect();
    parts.sort();
    parts.into_iter().map(|(_, s)| s).collect()
}

/// `events:all:{p3.12}` → 3.
pub fn partition_index(partition: &str) -> usize {
    partition["events:all:{p".len()..]
        .split('.')
        .next()
        .and_then(|i| i.parse().ok())
        .unwrap_or_else(|| panic!("{partition} is not a partition"))
}

/// The partition a producer following the README picks for `event_id`:
/// by its CRC-32 (zlib's).
pub fn partition_for<'a>(parts: &'a [String], event_id: &str) -> &'a str {
    &parts[crc32fast::hash(event_id.as_bytes()) as usize % parts.len()]
}

/// `data` with `event_type` and a new `event_id`, as a producer writes
/// it; returns the id and the entry's text.
pub fn event(event_type: &str, data: Value) -> (String, String) {
    let Value::Object(mut object) = data else {
        panic!("an event is an object")
    };
    let id = uuid::Uuid::new_v4().to_string();
    object.insert("event_type".into(), event_type.into());
    object.insert("event_id".into(), id.clone().into());
    (id, Value::Object(object).to_string())
}
