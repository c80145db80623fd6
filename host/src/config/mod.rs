//! `eventhost.toml` → validated, typed settings, and nothing more.
//!
//! The TOML is deserialized into raw structs that keep every value's
//! position ([`raw`]), then checked as a whole ([`check`]), so one run reports
//! every problem, each as `file:line:column: key: what is wrong`
//! ([`problem`]). Nothing past this module sees TOML, and this module sees
//! nothing past the text: whether files exist and plugins load is the
//! [preflight](crate::preflight)'s job.

mod check;
mod problem;
mod raw;
mod restart;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::outbound::HttpGrant;

pub use problem::{line_and_column, ConfigError, Problem};

/// Name of the folder, beside the config file, that holds the compiled-plugin
/// cache and the private Redis data.
pub const STATE_DIR: &str = ".eventhost";

/// The whole configuration of one eventhost process.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file this was read from.
    pub path: PathBuf,
    /// The file's text, to locate problems found later (a plugin that does
    /// not load) at the line that names them.
    pub text: Arc<str>,
    /// `.eventhost` beside the config file.
    pub state_dir: PathBuf,
    pub redis: RedisConfig,
    pub plugins: PluginsConfig,
    pub bus: BusConfig,
    pub telemetry: TelemetryConfig,
    pub http: HttpConfig,
    /// Sorted by name.
    pub subscribers: Vec<SubscriberConfig>,
    /// `[schedules.<name>]`, sorted by name.
    pub schedules: Vec<ScheduleConfig>,
    /// What is accepted but should change (an old key), each at its line:
    /// `check` prints them, `run` logs them.
    pub warnings: Vec<Problem>,
}

impl Config {
    /// A problem with the key at `path` (e.g. `["subscribers", name,
    /// "plugin"]`), located where the file writes it.
    pub fn problem(&self, path: &[&str], message: impl Into<String>) -> Problem {
        Problem::at_span(
            &self.path,
            &self.text,
            problem::span_of(&self.text, path),
            &path.join("."),
            message,
        )
    }
}

/// Where the bus lives.
#[derive(Debug, Clone, PartialEq)]
pub struct RedisConfig {
    /// `None`: start a private `redis-server`.
    pub endpoint: Option<Endpoint>,
    /// Key prefix, LeanMQ's `prefix` (default `events:`).
    pub prefix: String,
    /// Replicas that must hold a write before the bus builds on it (0: do
    /// not wait): narrows what a failover can lose.
    pub min_replicas_ack: u32,
    /// Longest a write waits for those replicas.
    pub replicas_timeout: Duration,
}

/// A Redis to use: one server, or a Redis Cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// One Redis server, by URL.
    Server(String),
    /// A Redis Cluster, by the URLs of some of its nodes (the seeds); the
    /// rest is discovered.
    Cluster(Vec<String>),
}

impl Endpoint {
    /// Whether this is a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        matches!(self, Endpoint::Cluster(_))
    }
}

/// Where plugins come from.
#[derive(Debug, Clone, PartialEq)]
pub struct PluginsConfig {
    /// Absolute folder of the `.wasm` files.
    pub dir: PathBuf,
    /// Reload changed plugins and config live.
    pub watch: bool,
    /// Compiled components, keyed by content and engine.
    pub cache_dir: PathBuf,
    /// Largest plugin file read, in bytes: a file is read whole, so a huge
    /// one (or a device like `/dev/zero`) must be refused before.
    pub max_file_bytes: u64,
    /// Plugin instances alive at once, all subscribers together: the slots
    /// of the instance pool. One subscriber holds at most a quarter.
    pub instances: usize,
    /// Size limit of the compiled cache, in bytes: past it the entries used
    /// least recently are removed.
    pub cache_max_bytes: u64,
    /// Longest a plugin may take to compile; past it, it is refused.
    pub compile_timeout: Duration,
    /// Memory (address space) a compile may use, in bytes.
    pub compile_memory_bytes: u64,
}

/// Default of `[subscribers.*] effects_mb`: far more than any handler's
/// commit needs (a commit is one Redis script), far less than a host has.
pub const DEFAULT_EFFECTS_MB: usize = 16;

/// Default of `[plugins] max_file_mb`: Python and JavaScript components are
/// 12 to 18 MB; this leaves them room to grow.
pub const DEFAULT_MAX_FILE_MB: u64 = 64;

/// Default of `[plugins] cache_mb`: room for a few dozen Python or
/// JavaScript builds (40 to 60 MB compiled each) and hundreds of Rust ones.
pub const DEFAULT_CACHE_MB: u64 = 2048;

/// Default of `[plugins] compile_timeout_s`: an 18 MB Python component
/// compiles in 10 to 16 s here; a busy CI machine may take several times
/// that.
pub const DEFAULT_COMPILE_TIMEOUT_S: u64 = 120;

/// Default of `[plugins] compile_memory_mb`: the address space of the
/// compiling child, binary and threads included; a Python component needs
/// about a gigabyte.
pub const DEFAULT_COMPILE_MEMORY_MB: u64 = 4096;

/// Default of `[plugins] instances`: a fresh instance of a small plugin
/// commits well under a megabyte, so a full pool stays within a host.
pub const DEFAULT_INSTANCES: usize = 1000;

/// How the bus reads and recovers.
#[derive(Debug, Clone, PartialEq)]
pub struct BusConfig {
    /// Entries fetched per read.
    pub read_batch: usize,
    /// A pending entry idle this long belongs to a dead consumer and is
    /// reclaimed.
    pub claim_idle: Duration,
    /// Larger `data` payloads are dead-lettered unread (by their id, size
    /// and prefix), and a plugin's larger publishes refused at the call.
    pub max_payload_bytes: usize,
    /// Most publishes from a producer's event to one a handler may still
    /// publish from: past it the call fails (a cycle of plugins ends).
    pub max_hops: u32,
    /// Acknowledged history kept in `events:all` and subscriber streams
    /// (about; 0 keeps everything). DLQs are never trimmed.
    pub stream_maxlen: usize,
    /// This process's consumer name in every group.
    pub consumer: String,
    /// Ingress streams producers spread events over: 1 on one server
    /// (LeanMQ's `events:all`), `[bus] partitions` on a cluster.
    pub partitions: usize,
    /// On a cluster, how long a subscriber remembers the events copied to
    /// it, so that a copy repeated after a crash is dropped.
    pub dedupe_window: Duration,
}

/// Default of `[bus] max_payload_bytes`.
pub const DEFAULT_MAX_PAYLOAD_BYTES: usize = 1 << 20;

/// Default of `[bus] max_hops`: far more than any honest chain of
/// handlers publishing to one another, few enough that a cycle ends fast.
pub const DEFAULT_MAX_HOPS: u32 = 32;

/// What one publish may be, from the bus's limits: checked at the call, so
/// a plugin learns of a refusal there, and never fills the bus's DLQ with
/// events the fan-out would refuse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublishLimits {
    /// Largest `data` the fan-out routes (`bus.max_payload_bytes`), the
    /// envelope included.
    pub max_bytes: usize,
    /// Most hops an event may be from its producer (`bus.max_hops`).
    pub max_hops: u32,
}

impl Default for PublishLimits {
    fn default() -> Self {
        PublishLimits {
            max_bytes: DEFAULT_MAX_PAYLOAD_BYTES,
            max_hops: DEFAULT_MAX_HOPS,
        }
    }
}

/// Descriptors always left to the host whatever plugins hold: Redis
/// connections, the watcher, plugin files being read, compilers' pipes,
/// the HTTP listener's sockets, logs.
pub const HOST_DESCRIPTOR_RESERVE: usize = 256;

/// Of a process limit of `nofile` descriptors, what plugins together may
/// hold: three quarters, leaving the host at least
/// [`HOST_DESCRIPTOR_RESERVE`]. The rest is the host's, shared by the
/// listener and everything else.
pub fn plugins_descriptor_share(nofile: usize) -> usize {
    (nofile * 3 / 4).min(nofile.saturating_sub(HOST_DESCRIPTOR_RESERVE))
}

/// Default of `[bus] partitions` on a cluster: a multiple of 1, 2, 3 and 6
/// shards, so ingress spreads evenly over them.
pub const DEFAULT_PARTITIONS: usize = 6;

/// Default of `[bus] dedupe_window_s`: far longer than a crashed host's
/// batch waits to be reclaimed (`claim_idle_ms`, 30 s by default).
pub const DEFAULT_DEDUPE_WINDOW_S: u64 = 300;

/// How the process reports on itself.
#[derive(Debug, Clone, PartialEq)]
pub struct TelemetryConfig {
    /// How log lines are written (`EVENTHOST_LOG_FORMAT` wins over it).
    pub log_format: LogFormat,
}

/// How log lines are written to stderr.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// For a person at a terminal.
    #[default]
    Text,
    /// One JSON object per line, for a log shipper.
    Json,
}

impl LogFormat {
    /// `text` or `json`.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "text" => Some(LogFormat::Text),
            "json" => Some(LogFormat::Json),
            _ => None,
        }
    }
}

/// The HTTP listener: metrics, health, readiness and the console.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpConfig {
    /// Where it listens; `None`: no listener. A bare port means loopback.
    pub listen: Option<SocketAddr>,
    /// What the console's replay and purge require (`EVENTHOST_ADMIN_TOKEN`
    /// wins over it); without one they are refused.
    pub admin_token: Option<Secret>,
    /// What the console's reads (the overview, the DLQ list and entries)
    /// require beside the admin token (`EVENTHOST_READ_TOKEN` wins over
    /// it); without either they are refused: payloads are operator data.
    pub read_token: Option<Secret>,
}

/// Text that must not reach a log: `{:?}` shows only that it is set.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Shortest admin or read token accepted: long enough not to be guessed.
pub const MIN_TOKEN_CHARS: usize = 16;

/// One subscriber: a plugin and the events it receives.
#[derive(Debug, Clone, PartialEq)]
pub struct SubscriberConfig {
    pub name: String,
    /// The file name as written in the config, for messages.
    pub plugin_file: String,
    /// Absolute path of the `.wasm` file.
    pub plugin: PathBuf,
    pub events: EventFilter,
    pub concurrency: usize,
    pub max_attempts: u32,
    pub timeout: Duration,
    pub memory_bytes: usize,
    /// What one call may make the host buffer (state writes and deletes,
    /// reads, publishes), in bytes: past it the call fails.
    pub effects_bytes: usize,
    /// What one publish may be: `bus.max_payload_bytes` and `bus.max_hops`.
    pub publish: PublishLimits,
    /// How long a retry waits.
    pub retry: RetryPolicy,
    /// `order_by`: events with the same key are handled one at a time, in
    /// the order they were routed; `None`: no order is kept.
    pub order: Option<OrderBy>,
    /// What the plugin reads with `config-get`.
    pub config: BTreeMap<String, String>,
    /// Environment variables and folders the plugin may read.
    pub grants: Grants,
}

/// How long a failed event waits before its next attempt: a retry waits
/// in Redis, not in a host, so it may wait hours.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// `retry_backoff_ms`: the wait before the second attempt; it doubles
    /// for each attempt after.
    pub backoff: Duration,
    /// `retry_backoff_max`: the longest wait.
    pub backoff_max: Duration,
    /// `retry_jitter`: the share of each wait that is random (0 to 1), so
    /// events that failed together do not all come back together.
    pub jitter: f64,
}

/// Longest `retry_backoff_ms` or `retry_backoff_max`: 30 days.
pub const MAX_RETRY_BACKOFF: Duration = Duration::from_secs(30 * 24 * 3600);

/// `retry_backoff_max` left out.
pub const DEFAULT_RETRY_BACKOFF_MAX: Duration = Duration::from_secs(3600);

impl Default for RetryPolicy {
    /// What a subscriber that sets none of the three gets.
    fn default() -> Self {
        RetryPolicy {
            backoff: Duration::from_millis(100),
            backoff_max: DEFAULT_RETRY_BACKOFF_MAX,
            jitter: 0.1,
        }
    }
}

impl RetryPolicy {
    /// The wait before attempt `next_attempt` (2 or more), jitter aside:
    /// doubling from [`RetryPolicy::backoff`], at most
    /// [`RetryPolicy::backoff_max`].
    pub fn backoff_before(&self, next_attempt: u32) -> Duration {
        let doublings = next_attempt.saturating_sub(2).min(64) as i32;
        let wait = self.backoff.as_secs_f64() * 2f64.powi(doublings);
        Duration::try_from_secs_f64(wait)
            .unwrap_or(Duration::MAX)
            .min(self.backoff_max)
    }

    /// [`RetryPolicy::backoff_before`] less the random share `draw` (from
    /// 0 to 1) of its jitter.
    pub fn delay_before(&self, next_attempt: u32, draw: f64) -> Duration {
        let wait = self.backoff_before(next_attempt);
        wait.mul_f64(1.0 - self.jitter * draw.clamp(0.0, 1.0))
    }
}

impl SubscriberConfig {
    /// How long to wait before attempt `next_attempt` (2 or more), jitter
    /// aside.
    pub fn backoff_before(&self, next_attempt: u32) -> Duration {
        self.retry.backoff_before(next_attempt)
    }
}

/// How a subscriber keeps the events of one key in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderBy {
    /// The field that holds an event's key, as written (`order_id`,
    /// `customer.id`): a top-level field, or a dotted path into objects.
    pub field: String,
    /// What a dead letter does to its key.
    pub on_dead_letter: OnDeadLetter,
    /// What becomes of an event without the field.
    pub without_key: WithoutKey,
}

impl OrderBy {
    /// The path of [`OrderBy::field`], one name per level.
    pub fn path(&self) -> impl Iterator<Item = &str> {
        self.field.split('.')
    }
}

/// What a dead letter does to the key of its event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnDeadLetter {
    /// The key moves on to its next event.
    Skip,
    /// The key waits until an operator replays or skips the dead letter.
    Park,
}

/// What becomes of an event that has no key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WithoutKey {
    /// It is handled without an order, as if the subscriber kept none.
    Run,
    /// It is dead-lettered, with the reason.
    Refuse,
}

/// Which event types a subscriber receives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventFilter {
    All,
    Types(BTreeSet<String>),
}

impl EventFilter {
    /// Whether an event of `event_type` is for this subscriber.
    pub fn matches(&self, event_type: &str) -> bool {
        match self {
            EventFilter::All => true,
            EventFilter::Types(types) => types.contains(event_type),
        }
    }
}

/// What a plugin may see beyond the bare sandbox, from its `grants` table.
///
/// Only what cannot duplicate an effect: environment variables and folders
/// to read. Writes and sockets would be effects outside the commit that
/// makes a handler's effects happen once, so they are not grantable.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Grants {
    /// Environment variables, name and value, in order.
    pub env: Vec<(String, String)>,
    /// Host folders the plugin may read.
    pub dirs: Vec<DirGrant>,
    /// Where the plugin may send HTTP requests (`wasi:http`).
    pub http: Vec<HttpGrant>,
    /// A PEM file of CAs its HTTPS requests trust besides the public
    /// roots, for private endpoints.
    pub http_ca: Option<PathBuf>,
}

/// A host folder visible, read-only, at a path inside the plugin.
#[derive(Debug, Clone, PartialEq)]
pub struct DirGrant {
    /// Where the plugin sees it, e.g. `/data`.
    pub guest: String,
    /// The folder on the host.
    pub host: PathBuf,
}

/// One `[schedules.<name>]`: an event published at each of its ticks,
/// once across every host.
#[derive(Debug, Clone, PartialEq)]
pub struct ScheduleConfig {
    pub name: String,
    /// The `event_type` of its events.
    pub event_type: String,
    /// When it ticks (`cron` and/or `every`).
    pub ticks: crate::schedule::Ticks,
    /// The rest of each event: `data`, as a JSON object.
    pub data: serde_json::Map<String, serde_json::Value>,
    /// What becomes of a tick that no host published at its time.
    pub missed: Missed,
}

/// What a schedule does with ticks that passed while no host ran it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Missed {
    /// The newest of them is published once, late; older ones never.
    Once,
    /// None is published; the schedule goes on from its next tick.
    Skip,
}

/// Reads the config file at `path` and checks its text (not the files it
/// names: see [`crate::preflight`]).
pub fn load(path: &Path) -> anyhow::Result<Config> {
    let (path, text) = read(path)?;
    Ok(parse(&path, &text)?)
}

/// The text of the config file at `path`, with the absolute path.
pub fn read(path: &Path) -> anyhow::Result<(PathBuf, String)> {
    let text = std::fs::read_to_string(path).map_err(|err| {
        anyhow::anyhow!(
            "cannot read config file {}: {err} (pass --config PATH or create eventhost.toml)",
            path.display()
        )
    })?;
    let path = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    Ok((path, text))
}

/// Validates config `text` as if read from `path`; relative paths in it are
/// resolved against `path`'s folder.
pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
    match check(path, text) {
        (Some(config), problems) if problems.is_empty() => Ok(config),
        (_, problems) => Err(ConfigError::new(problems)),
    }
}

/// Like [`parse`], but keeps going: the settings (with defaults where a
/// value was refused; `None` if the text is not a config at all) and every
/// problem, so a caller can add its own and report them all at once.
pub fn check(path: &Path, text: &str) -> (Option<Config>, Vec<Problem>) {
    check::check(path, text)
}

/// A folder with `plugins/pay.wasm` in it, for tests of configs that name
/// it.
#[cfg(test)]
pub(crate) fn dir_with_plugin() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("plugins")).unwrap();
    std::fs::write(dir.path().join("plugins/pay.wasm"), b"\0asm").unwrap();
    dir
}
