//! Raw TOML → typed settings: every value checked, every problem kept.
//!
//! Checking goes on past a bad value (it takes the default instead), so one
//! run reports every problem in the file. Only the text is judged here:
//! whether named files exist is the preflight's job.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use toml::Spanned;

use super::problem::{span_of, Problem};
use super::raw::{
    RawBus, RawConfig, RawGrants, RawHttp, RawPlugins, RawRedis, RawSubscriber, RawTelemetry,
};
use super::{
    BusConfig, Config, DirGrant, Endpoint, EventFilter, Grants, HttpConfig, LogFormat,
    PluginsConfig, RedisConfig, Secret, SubscriberConfig, TelemetryConfig, DEFAULT_CACHE_MB,
    DEFAULT_COMPILE_MEMORY_MB, DEFAULT_COMPILE_TIMEOUT_S, DEFAULT_DEDUPE_WINDOW_S,
    DEFAULT_EFFECTS_MB, DEFAULT_INSTANCES, DEFAULT_MAX_FILE_MB, DEFAULT_PARTITIONS,
    MAX_RETRY_BACKOFF, MIN_TOKEN_CHARS, STATE_DIR,
};
use crate::handler::{PublishLimits, DEFAULT_MAX_HOPS, DEFAULT_MAX_PAYLOAD_BYTES};

/// Checks config `text` read from `path`: the settings (`None` if the text
/// is not a config at all) and every problem found.
pub fn check(path: &Path, text: &str) -> (Option<Config>, Vec<Problem>) {
    let mut checker = Checker {
        file: path.to_path_buf(),
        text,
        problems: Vec::new(),
        warnings: Vec::new(),
    };
    let raw = match toml::de::Deserializer::parse(text) {
        Err(err) => Err((err.span(), String::new(), err.message().to_string())),
        Ok(de) => serde_path_to_error::deserialize::<_, RawConfig>(de).map_err(|err| {
            let key = clean_key_path(&err.path().to_string());
            let inner = err.into_inner();
            (inner.span(), key, inner.message().to_string())
        }),
    };
    match raw {
        Ok(raw) => {
            let config = checker.check(raw);
            (Some(config), checker.problems)
        }
        Err((span, key, message)) => {
            checker.push(span, &key, message.trim());
            (None, checker.problems)
        }
    }
}

struct Checker<'a> {
    file: PathBuf,
    text: &'a str,
    problems: Vec<Problem>,
    warnings: Vec<Problem>,
}

impl Checker<'_> {
    fn push(&mut self, span: Option<Range<usize>>, key: &str, message: impl Into<String>) {
        self.problems
            .push(Problem::at_span(&self.file, self.text, span, key, message));
    }

    /// An integer setting within `range`, or `default` when left out.
    fn int<T: TryFrom<i64> + Copy>(
        &mut self,
        value: &Option<Spanned<i64>>,
        key: &str,
        range: std::ops::RangeInclusive<i64>,
        default: T,
    ) -> T {
        let Some(value) = value else { return default };
        let got = *value.get_ref();
        match T::try_from(got) {
            Ok(ok) if range.contains(&got) => ok,
            _ => {
                self.push(
                    Some(value.span()),
                    key,
                    format!(
                        "must be between {} and {} (got {got})",
                        range.start(),
                        range.end()
                    ),
                );
                default
            }
        }
    }

    fn check(&mut self, raw: RawConfig) -> Config {
        let base = self
            .file
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        let state_dir = base.join(STATE_DIR);

        let redis = self.check_redis(raw.redis);
        let plugins = self.check_plugins(raw.plugins, &base, &state_dir);
        let cluster = redis.endpoint.as_ref().is_some_and(Endpoint::is_cluster);
        let bus = self.check_bus(raw.bus, cluster);
        let (telemetry, old_metrics) = self.check_telemetry(raw.telemetry);
        let http = self.check_http(raw.http, old_metrics);
        let subscribers = raw
            .subscribers
            .into_iter()
            .map(|(name, sub)| {
                let span = span_of(self.text, &["subscribers", &name]);
                self.check_subscriber(name, span, sub, &base, &plugins.dir, &bus)
            })
            .collect();
        Config {
            path: self.file.clone(),
            text: Arc::from(self.text),
            state_dir,
            redis,
            plugins,
            bus,
            telemetry,
            http,
            subscribers,
            warnings: std::mem::take(&mut self.warnings),
        }
    }

    fn check_redis(&mut self, raw: RawRedis) -> RedisConfig {
        let url = raw.url.inspect(|url| {
            if let Err(err) = redis::Client::open(url.get_ref().as_str()) {
                self.push(
                    Some(url.span()),
                    "redis.url",
                    format!(
                        "not a Redis URL ({err}); expected e.g. redis://127.0.0.1:6379/0, \
                         or leave it out to run a private redis-server"
                    ),
                );
            }
        });
        let cluster = raw.cluster.inspect(|seeds| {
            if seeds.get_ref().is_empty() {
                self.push(
                    Some(seeds.span()),
                    "redis.cluster",
                    "names no node; give the URL of one or more nodes of the cluster, \
                     e.g. [\"redis://10.0.0.1:6379\"]",
                );
            }
            for seed in seeds.get_ref() {
                if let Err(err) = redis::Client::open(seed.get_ref().as_str()) {
                    self.push(
                        Some(seed.span()),
                        "redis.cluster",
                        format!("not a Redis URL ({err}); expected e.g. redis://10.0.0.1:6379"),
                    );
                }
            }
        });
        let endpoint = match (url, cluster) {
            (Some(_), Some(cluster)) => {
                self.push(
                    Some(cluster.span()),
                    "redis.cluster",
                    "cannot be set with redis.url: one names a server, the other a cluster; \
                     keep one",
                );
                None
            }
            (Some(url), None) => Some(Endpoint::Server(url.into_inner())),
            (None, Some(cluster)) => Some(Endpoint::Cluster(
                cluster
                    .into_inner()
                    .into_iter()
                    .map(Spanned::into_inner)
                    .collect(),
            )),
            (None, None) => None,
        };
        let prefix = match raw.prefix {
            Some(prefix) if prefix.get_ref().is_empty() => {
                self.push(Some(prefix.span()), "redis.prefix", "must not be empty");
                "events:".into()
            }
            Some(prefix) if prefix.get_ref().contains(['{', '}']) => {
                self.push(
                    Some(prefix.span()),
                    "redis.prefix",
                    "must not contain { or }: they would change which Redis Cluster slot a key \
                     lives in",
                );
                "events:".into()
            }
            Some(prefix) => prefix.into_inner(),
            None => "events:".into(),
        };
        RedisConfig {
            endpoint,
            prefix,
            min_replicas_ack: self.int(&raw.min_replicas_ack, "redis.min_replicas_ack", 0..=16, 0),
            replicas_timeout: Duration::from_millis(self.int(
                &raw.replicas_timeout_ms,
                "redis.replicas_timeout_ms",
                1..=60_000,
                1000u64,
            )),
        }
    }

    fn check_plugins(&mut self, raw: RawPlugins, base: &Path, state_dir: &Path) -> PluginsConfig {
        let dir = match raw.dir {
            Some(ref dir) => base.join(dir.get_ref()),
            None => base.join("plugins"),
        };
        let cache_dir = raw
            .cache_dir
            .as_ref()
            .map_or_else(|| state_dir.join("cache"), |d| base.join(d.get_ref()));
        // Whoever may drop plugins into the folder must not be able to plant
        // compiled code (a cache entry is native code the host runs), and
        // the watcher must not take cache writes for plugin changes.
        if normal(&cache_dir).starts_with(normal(&dir)) {
            let span = raw.cache_dir.as_ref().map(Spanned::span);
            let key = if span.is_some() {
                "plugins.cache_dir"
            } else {
                "plugins.dir"
            };
            let span = span.or_else(|| raw.dir.as_ref().map(Spanned::span));
            self.push(
                span,
                key,
                format!(
                    "the compiled cache ({}) must not be inside plugins.dir ({}): whoever can \
                     drop a plugin there could plant compiled code; put it elsewhere, e.g. \
                     cache_dir = \".eventhost/cache\"",
                    cache_dir.display(),
                    dir.display()
                ),
            );
        }
        let cache_mb = self.int(
            &raw.cache_mb,
            "plugins.cache_mb",
            16..=1 << 20,
            DEFAULT_CACHE_MB,
        );
        let max_file_mb = self.int(
            &raw.max_file_mb,
            "plugins.max_file_mb",
            1..=4096,
            DEFAULT_MAX_FILE_MB,
        );
        let instances = self.int(
            &raw.instances,
            "plugins.instances",
            4..=100_000,
            DEFAULT_INSTANCES,
        );
        PluginsConfig {
            dir,
            watch: raw.watch.unwrap_or(true),
            cache_dir,
            max_file_bytes: max_file_mb << 20,
            instances,
            cache_max_bytes: cache_mb << 20,
            compile_timeout: Duration::from_secs(self.int(
                &raw.compile_timeout_s,
                "plugins.compile_timeout_s",
                1..=3600,
                DEFAULT_COMPILE_TIMEOUT_S,
            )),
            compile_memory_bytes: self.int(
                &raw.compile_memory_mb,
                "plugins.compile_memory_mb",
                256..=1 << 20,
                DEFAULT_COMPILE_MEMORY_MB,
            ) << 20,
        }
    }

    fn check_bus(&mut self, raw: RawBus, cluster: bool) -> BusConfig {
        let partitions = match &raw.partitions {
            Some(p) if !cluster => {
                self.push(
                    Some(p.span()),
                    "bus.partitions",
                    "applies to a Redis Cluster only (set [redis] cluster); one server has one \
                     ingress stream, events:all",
                );
                1
            }
            _ if cluster => self.int(
                &raw.partitions,
                "bus.partitions",
                1..=1024,
                DEFAULT_PARTITIONS,
            ),
            _ => 1,
        };
        let dedupe_window = Duration::from_secs(self.int(
            &raw.dedupe_window_s,
            "bus.dedupe_window_s",
            1..=7 * 86_400,
            DEFAULT_DEDUPE_WINDOW_S,
        ));
        let consumer = match raw.consumer {
            Some(name) if !valid_name(name.get_ref()) => {
                self.push(Some(name.span()), "bus.consumer", NAME_RULE);
                default_consumer()
            }
            Some(name) => name.into_inner(),
            None => default_consumer(),
        };
        BusConfig {
            read_batch: self.int(&raw.read_batch, "bus.read_batch", 1..=10_000, 256),
            claim_idle: Duration::from_millis(self.int(
                &raw.claim_idle_ms,
                "bus.claim_idle_ms",
                100..=86_400_000,
                30_000u64,
            )),
            max_payload_bytes: self.int(
                &raw.max_payload_bytes,
                "bus.max_payload_bytes",
                1..=512 << 20,
                DEFAULT_MAX_PAYLOAD_BYTES,
            ),
            max_hops: self.int(&raw.max_hops, "bus.max_hops", 1..=10_000, DEFAULT_MAX_HOPS),
            stream_maxlen: self.int(
                &raw.stream_maxlen,
                "bus.stream_maxlen",
                0..=1_000_000_000,
                100_000,
            ),
            consumer,
            partitions,
            dedupe_window,
        }
    }

    /// The telemetry settings, and the old `metrics` key if set (now
    /// `[http] listen`).
    fn check_telemetry(&mut self, raw: RawTelemetry) -> (TelemetryConfig, Option<Spanned<String>>) {
        let log_format = match raw.log_format {
            None => LogFormat::Text,
            Some(format) => LogFormat::parse(format.get_ref()).unwrap_or_else(|| {
                self.push(
                    Some(format.span()),
                    "telemetry.log_format",
                    format!("must be \"text\" or \"json\" (got {:?})", format.get_ref()),
                );
                LogFormat::Text
            }),
        };
        (TelemetryConfig { log_format }, raw.metrics)
    }

    /// `[http] listen`, or the old `[telemetry] metrics` in its place.
    fn check_http(&mut self, raw: RawHttp, old_metrics: Option<Spanned<String>>) -> HttpConfig {
        let listen = match (raw.listen, old_metrics) {
            (Some(listen), Some(old)) => {
                self.push(
                    Some(old.span()),
                    "telemetry.metrics",
                    "is the old name of [http] listen, which is set too; remove this one",
                );
                Some((listen, "http.listen"))
            }
            (Some(listen), None) => Some((listen, "http.listen")),
            (None, Some(old)) => {
                self.warnings.push(Problem::at_span(
                    &self.file,
                    self.text,
                    Some(old.span()),
                    "telemetry.metrics",
                    "is now [http] listen, which also serves /healthz and /readyz; rename it",
                ));
                Some((old, "telemetry.metrics"))
            }
            (None, None) => None,
        };
        let listen = listen.and_then(|(addr, key)| match listen_address(addr.get_ref()) {
            Some(addr) => Some(addr),
            None => {
                self.push(
                    Some(addr.span()),
                    key,
                    format!(
                        "not an address like 127.0.0.1:9464 or a port like 9464 (got {:?})",
                        addr.get_ref()
                    ),
                );
                None
            }
        });
        let admin_token = raw.admin_token.and_then(|token| {
            if token.get_ref().chars().count() < MIN_TOKEN_CHARS {
                self.push(
                    Some(token.span()),
                    "http.admin_token",
                    format!(
                        "must be at least {MIN_TOKEN_CHARS} characters, e.g. the output of \
                         `openssl rand -hex 16`"
                    ),
                );
                return None;
            }
            Some(Secret(token.into_inner()))
        });
        HttpConfig {
            listen,
            admin_token,
        }
    }

    fn check_subscriber(
        &mut self,
        name: String,
        name_span: Option<Range<usize>>,
        raw: RawSubscriber,
        base: &Path,
        plugin_dir: &Path,
        bus: &BusConfig,
    ) -> SubscriberConfig {
        let key = |field: &str| format!("subscribers.{name}.{field}");
        if !valid_name(&name) {
            self.push(name_span, &format!("subscribers.{name}"), NAME_RULE);
        }

        let plugin_file = raw.plugin.get_ref().clone();
        let relative = Path::new(&plugin_file);
        let inside = !plugin_file.is_empty()
            && relative
                .components()
                .all(|c| matches!(c, Component::Normal(_)));
        let plugin = plugin_dir.join(relative);
        if !inside {
            self.push(
                Some(raw.plugin.span()),
                &key("plugin"),
                "must be a file name inside plugins.dir, e.g. \"payment_service.wasm\"",
            );
        }

        let events = match raw.events {
            None => EventFilter::All,
            Some(list) => {
                let span = list.span();
                let types: Vec<Spanned<String>> = list.into_inner();
                if types.is_empty() {
                    self.push(
                        Some(span.clone()),
                        &key("events"),
                        "must name at least one event type, or [\"*\"] for all",
                    );
                }
                for t in &types {
                    if t.get_ref().trim().is_empty() {
                        self.push(Some(t.span()), &key("events"), "empty event type");
                    }
                }
                if types.iter().any(|t| t.get_ref() == "*") {
                    if types.len() > 1 {
                        self.push(
                            Some(span),
                            &key("events"),
                            "\"*\" already means every type; list it alone",
                        );
                    }
                    EventFilter::All
                } else {
                    EventFilter::Types(types.into_iter().map(Spanned::into_inner).collect())
                }
            }
        };

        let concurrency = self.int(&raw.concurrency, &key("concurrency"), 1..=1024, 1usize);
        let max_attempts = self.int(&raw.max_attempts, &key("max_attempts"), 1..=1000, 3u32);
        let timeout_ms = self.int(&raw.timeout_ms, &key("timeout_ms"), 1..=600_000, 1000u64);
        let memory_mb = self.int(&raw.memory_mb, &key("memory_mb"), 1..=4096, 64usize);
        let effects_mb = self.int(
            &raw.effects_mb,
            &key("effects_mb"),
            1..=1024,
            DEFAULT_EFFECTS_MB,
        );
        let backoff_ms = self.int(
            &raw.retry_backoff_ms,
            &key("retry_backoff_ms"),
            0..=MAX_RETRY_BACKOFF.as_millis() as i64,
            100u64,
        );
        // A handler still running when its entry looks idle would be
        // reclaimed and run twice at once.
        if let Some(timeout) = &raw.timeout_ms {
            if Duration::from_millis(timeout_ms) * 2 > bus.claim_idle {
                self.push(
                    Some(timeout.span()),
                    &key("timeout_ms"),
                    format!(
                        "must be at most half of bus.claim_idle_ms ({} ms)",
                        bus.claim_idle.as_millis()
                    ),
                );
            }
        }

        let mut config = BTreeMap::new();
        for (k, v) in raw.config {
            let field = format!("{}.{}", key("config"), k.get_ref());
            if let Some(text) = self.text_value(&v, &field) {
                config.insert(k.into_inner(), text);
            }
        }
        let grants = self.check_grants(raw.grants, &key("grants"), base);
        SubscriberConfig {
            name,
            plugin_file,
            plugin,
            events,
            concurrency,
            max_attempts,
            timeout: Duration::from_millis(timeout_ms),
            memory_bytes: memory_mb << 20,
            effects_bytes: effects_mb << 20,
            publish: PublishLimits {
                max_bytes: bus.max_payload_bytes,
                max_hops: bus.max_hops,
            },
            retry_backoff: Duration::from_millis(backoff_ms),
            config,
            grants,
        }
    }

    /// A string, number or boolean as the text a plugin reads.
    fn text_value(&mut self, value: &Spanned<toml::Value>, key: &str) -> Option<String> {
        Some(match value.get_ref() {
            toml::Value::String(s) => s.clone(),
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Float(f) => f.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            toml::Value::Datetime(d) => d.to_string(),
            toml::Value::Array(_) | toml::Value::Table(_) => {
                self.push(
                    Some(value.span()),
                    key,
                    "values are strings, numbers or booleans (the plugin reads text)",
                );
                return None;
            }
        })
    }

    /// `grants.env` (name = value) and `grants.dirs` (path in the plugin =
    /// folder on the host, relative to the config file, read-only).
    fn check_grants(&mut self, raw: RawGrants, key: &str, base: &Path) -> Grants {
        let mut grants = Grants::default();
        for (name, value) in raw.env {
            let field = format!("{key}.env.{}", name.get_ref());
            let bad_name = name.get_ref().is_empty() || name.get_ref().contains(['=', '\0']);
            if bad_name {
                self.push(Some(name.span()), &field, "not a usable variable name");
            }
            if let Some(text) = self.text_value(&value, &field) {
                grants.env.push((name.into_inner(), text));
            }
        }
        for (guest, host) in raw.dirs {
            let field = format!("{key}.dirs.{}", guest.get_ref());
            if !guest.get_ref().starts_with('/') {
                self.push(
                    Some(guest.span()),
                    &field,
                    "the path inside the plugin must be absolute, e.g. \"/data\"",
                );
            }
            grants.dirs.push(DirGrant {
                guest: guest.into_inner(),
                host: base.join(host.get_ref()),
            });
        }
        grants
    }
}

/// `path` without `.` and `..` (resolved lexically): how it compares to
/// another before either exists.
fn normal(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

/// `host:port`, or a bare port on loopback: only an address written out
/// exposes the listener beyond this machine.
fn listen_address(text: &str) -> Option<SocketAddr> {
    match text.trim().parse::<u16>() {
        Ok(port) => Some(SocketAddr::from(([127, 0, 0, 1], port))),
        Err(_) => text.trim().parse().ok(),
    }
}

const NAME_RULE: &str = "names use only letters, digits, '-', '_' and '.'";

/// Names end up inside Redis keys and group names, where `:` separates parts.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// Unique per process, readable in `XINFO CONSUMERS`.
fn default_consumer() -> String {
    let host = gethostname::gethostname().to_string_lossy().into_owned();
    let host: String = host
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    format!("{host}-{}", std::process::id())
}

/// serde_path_to_error's path, as a user would write the key: no root `.`,
/// no segments from `Spanned`'s internals.
fn clean_key_path(path: &str) -> String {
    if path == "." {
        return String::new();
    }
    path.split('.')
        .filter(|segment| !segment.starts_with("$__serde_spanned"))
        .collect::<Vec<_>>()
        .join(".")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{dir_with_plugin, parse, ConfigError};

    fn parse_in(dir: &Path, text: &str) -> Result<Config, ConfigError> {
        parse(&dir.join("eventhost.toml"), text)
    }

    fn only_problem(err: ConfigError) -> Problem {
        assert_eq!(err.problems.len(), 1, "{err}");
        err.problems.into_iter().next().unwrap()
    }

    #[test]
    fn a_full_config_becomes_typed_settings() {
        let dir = dir_with_plugin();
        let config = parse_in(
            dir.path(),
            r#"
[redis]
url = "redis://127.0.0.1:6379/0"
prefix = "ev:"

[plugins]
dir = "plugins"
watch = false

[subscribers.payment-service]
plugin = "pay.wasm"
events = ["OrderCreatedEvent"]
concurrency = 4
max_attempts = 5
timeout_ms = 250
memory_mb = 32
[subscribers.payment-service.config]
currency = "EUR"
decline_percent = 10
"#,
        )
        .unwrap();
        assert_eq!(
            config.redis.endpoint,
            Some(Endpoint::Server("redis://127.0.0.1:6379/0".into()))
        );
        assert_eq!(config.redis.prefix, "ev:");
        assert!(!config.plugins.watch);
        assert_eq!(config.plugins.dir, dir.path().join("plugins"));
        assert_eq!(
            config.plugins.cache_dir,
            dir.path().join(".eventhost/cache")
        );
        let sub = &config.subscribers[0];
        assert_eq!(sub.name, "payment-service");
        assert_eq!(sub.plugin, dir.path().join("plugins/pay.wasm"));
        assert!(sub.events.matches("OrderCreatedEvent"));
        assert!(!sub.events.matches("OrderShippedEvent"));
        assert_eq!(sub.concurrency, 4);
        assert_eq!(sub.max_attempts, 5);
        assert_eq!(sub.timeout, Duration::from_millis(250));
        assert_eq!(sub.memory_bytes, 32 << 20);
        assert_eq!(sub.config["currency"], "EUR");
        assert_eq!(sub.config["decline_percent"], "10");
    }

    #[test]
    fn defaults_fill_what_is_left_out() {
        let dir = dir_with_plugin();
        let config = parse_in(dir.path(), "[subscribers.a]\nplugin = \"pay.wasm\"\n").unwrap();
        assert_eq!(config.redis.endpoint, None);
        assert_eq!(config.redis.prefix, "events:");
        assert!(config.plugins.watch);
        let sub = &config.subscribers[0];
        assert_eq!(sub.events, EventFilter::All);
        assert_eq!(
            (
                sub.concurrency,
                sub.max_attempts,
                sub.timeout,
                sub.memory_bytes
            ),
            (1, 3, Duration::from_secs(1), 64 << 20)
        );
        assert_eq!(sub.effects_bytes, 16 << 20);
        assert_eq!(config.plugins.max_file_bytes, 64 << 20);
        assert_eq!(config.bus.claim_idle, Duration::from_secs(30));
        assert_eq!(
            (config.bus.max_hops, config.bus.max_payload_bytes),
            (32, 1 << 20)
        );
        assert_eq!(
            sub.publish,
            PublishLimits {
                max_bytes: 1 << 20,
                max_hops: 32
            }
        );
    }

    #[test]
    fn the_hop_limit_is_checked_and_reaches_the_subscribers() {
        let dir = dir_with_plugin();
        let text = "[bus]\nmax_hops = 4\nmax_payload_bytes = 2048\n\n[subscribers.a]\nplugin = \"pay.wasm\"\n";
        let config = parse_in(dir.path(), text).unwrap();
        assert_eq!(
            config.subscribers[0].publish,
            PublishLimits {
                max_bytes: 2048,
                max_hops: 4
            }
        );
        let err = parse_in(dir.path(), "[bus]\nmax_hops = 0\n").unwrap_err();
        let problem = only_problem(err);
        assert_eq!((problem.line, problem.key.as_str()), (2, "bus.max_hops"));
        assert!(
            problem.message.contains("between 1 and 10000"),
            "{}",
            problem.message
        );
    }

    #[test]
    fn an_unknown_key_names_file_line_and_key() {
        let dir = dir_with_plugin();
        let err = parse_in(
            dir.path(),
            "[subscribers.a]\nplugin = \"pay.wasm\"\nconcurency = 4\n",
        )
        .unwrap_err();
        let problem = only_problem(err);
        assert_eq!(problem.file, dir.path().join("eventhost.toml"));
        assert_eq!(problem.line, 3);
        assert!(problem.key.starts_with("subscribers.a"), "{problem}");
        assert!(problem.message.contains("concurency"), "{problem}");
    }

    #[test]
    fn a_wrong_type_names_the_key() {
        let dir = dir_with_plugin();
        let err = parse_in(
            dir.path(),
            "[subscribers.a]\nplugin = \"pay.wasm\"\n\nconcurrency = \"four\"\n",
        )
        .unwrap_err();
        let problem = only_problem(err);
        assert_eq!(problem.line, 4, "{problem}");
        assert_eq!(problem.key, "subscribers.a.concurrency", "{problem}");
    }

    #[test]
    fn a_syntax_error_has_a_line() {
        let dir = dir_with_plugin();
        let problem = only_problem(parse_in(dir.path(), "[redis]\nurl = \n").unwrap_err());
        assert_eq!(problem.line, 2, "{problem}");
    }

    #[test]
    fn grants_give_env_and_folders_to_read() {
        let dir = dir_with_plugin();
        std::fs::create_dir(dir.path().join("rates")).unwrap();
        let config = parse_in(
            dir.path(),
            "[subscribers.a]\nplugin = \"pay.wasm\"\n[subscribers.a.grants]\n\
             env = { REGION = \"eu\", RETRIES = 3 }\ndirs = { \"/rates\" = \"rates\" }\n",
        )
        .unwrap();
        let grants = &config.subscribers[0].grants;
        assert_eq!(
            grants.env,
            [
                ("REGION".into(), "eu".into()),
                ("RETRIES".into(), "3".into())
            ]
        );
        assert_eq!(
            grants.dirs,
            [DirGrant {
                guest: "/rates".into(),
                host: dir.path().join("rates")
            }]
        );
        assert_eq!(
            parse_in(dir.path(), "[subscribers.a]\nplugin = \"pay.wasm\"\n")
                .unwrap()
                .subscribers[0]
                .grants,
            Grants::default(),
            "nothing is granted unless asked for"
        );
    }

    #[test]
    fn the_cache_cannot_be_inside_the_plugins_folder() {
        let dir = dir_with_plugin();
        let problem = only_problem(
            parse_in(
                dir.path(),
                "[plugins]\ndir = \"plugins\"\ncache_dir = \"./plugins/../plugins/cache\"\n",
            )
            .unwrap_err(),
        );
        assert_eq!(problem.key, "plugins.cache_dir", "{problem}");
        let text = problem.to_string();
        assert!(
            text.contains("eventhost.toml:3:13: plugins.cache_dir: the compiled cache"),
            "{text}"
        );
        assert!(text.contains("must not be inside plugins.dir"), "{text}");
        // The default cache (.eventhost/cache) is inside a plugins folder
        // that is the config's own.
        let problem = only_problem(parse_in(dir.path(), "[plugins]\ndir = \".\"\n").unwrap_err());
        assert_eq!(problem.key, "plugins.dir", "{problem}");
        assert!(parse_in(dir.path(), "[plugins]\ncache_dir = \"plugins-cache\"\n").is_ok());
    }

    #[test]
    fn plugin_paths_stay_inside_the_folder() {
        let dir = dir_with_plugin();
        let err = parse_in(dir.path(), "[subscribers.a]\nplugin = \"../pay.wasm\"\n").unwrap_err();
        assert!(only_problem(err).message.contains("inside plugins.dir"));
    }

    #[test]
    fn a_timeout_must_fit_inside_the_claim_window() {
        let dir = dir_with_plugin();
        let err = parse_in(
            dir.path(),
            "[bus]\nclaim_idle_ms = 1000\n[subscribers.a]\nplugin = \"pay.wasm\"\ntimeout_ms = 800\n",
        )
        .unwrap_err();
        assert_eq!(only_problem(err).key, "subscribers.a.timeout_ms");
    }

    #[test]
    fn star_means_every_type_and_stands_alone() {
        let dir = dir_with_plugin();
        let config = parse_in(
            dir.path(),
            "[subscribers.a]\nplugin = \"pay.wasm\"\nevents = [\"*\"]\n",
        )
        .unwrap();
        assert_eq!(config.subscribers[0].events, EventFilter::All);
        let err = parse_in(
            dir.path(),
            "[subscribers.a]\nplugin = \"pay.wasm\"\nevents = [\"*\", \"A\"]\n",
        )
        .unwrap_err();
        assert!(only_problem(err).message.contains("alone"));
    }

    #[test]
    fn http_listens_on_loopback_unless_told_otherwise() {
        let dir = dir_with_plugin();
        let sub = "[subscribers.a]\nplugin = \"pay.wasm\"\n";
        let listen =
            |http: &str| parse_in(dir.path(), &format!("{http}{sub}")).map(|c| c.http.listen);
        assert_eq!(listen("").unwrap(), None, "no listener unless asked for");
        assert_eq!(
            listen("[http]\nlisten = \"9464\"\n").unwrap(),
            Some("127.0.0.1:9464".parse().unwrap())
        );
        assert_eq!(
            listen("[http]\nlisten = \"0.0.0.0:80\"\n").unwrap(),
            Some("0.0.0.0:80".parse().unwrap())
        );
        let problem = only_problem(listen("[http]\nlisten = \"localhost\"\n").unwrap_err());
        assert_eq!((problem.line, problem.key.as_str()), (2, "http.listen"));
    }

    #[test]
    fn an_admin_token_is_long_and_never_printed() {
        let dir = dir_with_plugin();
        let sub = "[subscribers.a]\nplugin = \"pay.wasm\"\n";
        let config = parse_in(
            dir.path(),
            &format!("[http]\nadmin_token = \"0123456789abcdef\"\n{sub}"),
        )
        .unwrap();
        let token = config.http.admin_token.as_ref().unwrap();
        assert_eq!(token.0, "0123456789abcdef");
        assert!(!format!("{:?}", config.http).contains("0123456789abcdef"));
        let err = parse_in(
            dir.path(),
            &format!("[http]\nadmin_token = \"short\"\n{sub}"),
        )
        .unwrap_err();
        assert_eq!(only_problem(err).key, "http.admin_token");
    }

    #[test]
    fn the_old_metrics_key_still_works_with_a_warning() {
        let dir = dir_with_plugin();
        let text =
            "[telemetry]\nmetrics = \"127.0.0.1:9464\"\n[subscribers.a]\nplugin = \"pay.wasm\"\n";
        let config = parse_in(dir.path(), text).unwrap();
        assert_eq!(config.http.listen, Some("127.0.0.1:9464".parse().unwrap()));
        assert_eq!(config.warnings.len(), 1);
        let warning = config.warnings[0].to_string();
        assert!(
            warning.ends_with("eventhost.toml:2:11: telemetry.metrics: is now [http] listen, which also serves /healthz and /readyz; rename it"),
            "{warning}"
        );
        let both = format!("[http]\nlisten = \"9464\"\n{text}");
        let problem = only_problem(parse_in(dir.path(), &both).unwrap_err());
        assert_eq!(
            (problem.line, problem.key.as_str()),
            (4, "telemetry.metrics")
        );
    }

    #[test]
    fn logs_are_text_or_json() {
        let dir = dir_with_plugin();
        let sub = "[subscribers.a]\nplugin = \"pay.wasm\"\n";
        let config = parse_in(
            dir.path(),
            &format!("[telemetry]\nlog_format = \"json\"\n{sub}"),
        )
        .unwrap();
        assert_eq!(config.telemetry.log_format, LogFormat::Json);
        let err = parse_in(
            dir.path(),
            &format!("[telemetry]\nlog_format = \"xml\"\n{sub}"),
        )
        .unwrap_err();
        assert_eq!(only_problem(err).key, "telemetry.log_format");
    }

    #[test]
    fn backoff_doubles_up_to_a_cap() {
        let dir = dir_with_plugin();
        let config = parse_in(
            dir.path(),
            "[subscribers.a]\nplugin = \"pay.wasm\"\nretry_backoff_ms = 100\n",
        )
        .unwrap();
        let sub = &config.subscribers[0];
        assert_eq!(sub.backoff_before(2), Duration::from_millis(100));
        assert_eq!(sub.backoff_before(3), Duration::from_millis(200));
        assert_eq!(sub.backoff_before(4), Duration::from_millis(400));
        assert_eq!(sub.backoff_before(40), MAX_RETRY_BACKOFF);
    }

    #[test]
    fn a_cluster_is_named_by_its_seeds_and_owns_the_partitions() {
        let dir = dir_with_plugin();
        let config = parse_in(
            dir.path(),
            "[redis]\ncluster = [\"redis://10.0.0.1:7000\", \"redis://10.0.0.2:7000\"]\n\
             min_replicas_ack = 1\n[bus]\npartitions = 12\n",
        )
        .unwrap();
        assert_eq!(
            config.redis.endpoint,
            Some(Endpoint::Cluster(vec![
                "redis://10.0.0.1:7000".into(),
                "redis://10.0.0.2:7000".into()
            ]))
        );
        assert_eq!(config.redis.min_replicas_ack, 1);
        assert_eq!(config.bus.partitions, 12);
        let default = parse_in(dir.path(), "[redis]\ncluster = [\"redis://h:1\"]\n").unwrap();
        assert_eq!(default.bus.partitions, DEFAULT_PARTITIONS);
        assert_eq!(parse_in(dir.path(), "").unwrap().bus.partitions, 1);

        let err = parse_in(
            dir.path(),
            "[redis]\nurl = \"redis://h\"\ncluster = [\"redis://h:1\"]\n",
        )
        .unwrap_err();
        let problem = only_problem(err);
        assert_eq!((problem.line, problem.key.as_str()), (3, "redis.cluster"));
        let err = parse_in(dir.path(), "[bus]\npartitions = 4\n").unwrap_err();
        let problem = only_problem(err);
        assert_eq!((problem.line, problem.key.as_str()), (2, "bus.partitions"));
        assert!(
            problem.message.contains("[redis] cluster"),
            "{}",
            problem.message
        );
        let err = parse_in(dir.path(), "[redis]\ncluster = []\nprefix = \"{x}\"\n").unwrap_err();
        let keys: Vec<_> = err.problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(keys, ["redis.cluster", "redis.prefix"]);
    }
}
