//! Checking the settings sections: `[redis]`, `[plugins]`, `[bus]`,
//! `[telemetry]` and `[http]`.

use super::*;

impl Checker<'_> {
    pub(super) fn check_redis(&mut self, raw: RawRedis) -> RedisConfig {
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

    pub(super) fn check_plugins(
        &mut self,
        raw: RawPlugins,
        base: &Path,
        state_dir: &Path,
    ) -> PluginsConfig {
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

    pub(super) fn check_bus(&mut self, raw: RawBus, cluster: bool) -> BusConfig {
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
    pub(super) fn check_telemetry(
        &mut self,
        raw: RawTelemetry,
    ) -> (TelemetryConfig, Option<Spanned<String>>) {
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
    pub(super) fn check_http(
        &mut self,
        raw: RawHttp,
        old_metrics: Option<Spanned<String>>,
    ) -> HttpConfig {
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
        let admin_token = self.token(raw.admin_token, "http.admin_token");
        let read_token = self.token(raw.read_token, "http.read_token");
        HttpConfig {
            listen,
            admin_token,
            read_token,
        }
    }

    /// A token of `[http]`, held to one rule: long enough not to be guessed.
    fn token(&mut self, token: Option<Spanned<String>>, key: &str) -> Option<Secret> {
        let token = token?;
        if token.get_ref().chars().count() < MIN_TOKEN_CHARS {
            self.push(
                Some(token.span()),
                key,
                format!(
                    "must be at least {MIN_TOKEN_CHARS} characters, e.g. the output of \
                     `openssl rand -hex 16`"
                ),
            );
            return None;
        }
        Some(Secret(token.into_inner()))
    }
}

/// `path` without `.` and `..` (resolved lexically): how it compares to
/// another before either exists.
pub(super) fn normal(path: &Path) -> PathBuf {
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
pub(super) fn listen_address(text: &str) -> Option<SocketAddr> {
    match text.trim().parse::<u16>() {
        Ok(port) => Some(SocketAddr::from(([127, 0, 0, 1], port))),
        Err(_) => text.trim().parse().ok(),
    }
}

pub(super) const NAME_RULE: &str = "names use only letters, digits, '-', '_' and '.'";

/// Names end up inside Redis keys and group names, where `:` separates parts.
pub(super) fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// Unique per process, readable in `XINFO CONSUMERS`.
pub(super) fn default_consumer() -> String {
    let host = gethostname::gethostname().to_string_lossy().into_owned();
    let host: String = host
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    format!("{host}-{}", std::process::id())
}
