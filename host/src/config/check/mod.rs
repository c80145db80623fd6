//! Raw TOML → typed settings: every value checked, every problem kept.
//!
//! Checking goes on past a bad value (it takes the default instead), so one
//! run reports every problem in the file. Only the text is judged here:
//! whether named files exist is the preflight's job.
//!
//! The core (this file) walks the file; [`sections`] checks `[redis]`,
//! `[plugins]`, `[bus]`, `[telemetry]` and `[http]`, [`subscriber`] each
//! subscriber and its grants, [`schedule`] each schedule.

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
    OnDeadLetter, OrderBy, PluginsConfig, RedisConfig, Secret, SubscriberConfig, TelemetryConfig,
    WithoutKey, DEFAULT_CACHE_MB, DEFAULT_COMPILE_MEMORY_MB, DEFAULT_COMPILE_TIMEOUT_S,
    DEFAULT_DEDUPE_WINDOW_S, DEFAULT_EFFECTS_MB, DEFAULT_INSTANCES, DEFAULT_MAX_FILE_MB,
    DEFAULT_PARTITIONS, MAX_RETRY_BACKOFF, MIN_TOKEN_CHARS, STATE_DIR,
};
use crate::config::{PublishLimits, DEFAULT_MAX_HOPS, DEFAULT_MAX_PAYLOAD_BYTES};

mod schedule;
mod sections;
mod subscriber;

use sections::{valid_name, NAME_RULE};

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

    /// A duration setting written as text (`"90s"`, `"6h"`, `"1h 30m"`)
    /// within `range`, or `default` when left out.
    fn duration(
        &mut self,
        value: &Option<Spanned<String>>,
        key: &str,
        range: std::ops::RangeInclusive<Duration>,
        default: Duration,
    ) -> Duration {
        let Some(value) = value else { return default };
        let shown = |d: &Duration| humantime::format_duration(*d).to_string();
        match humantime::parse_duration(value.get_ref()) {
            Ok(got) if range.contains(&got) => got,
            Ok(_) => {
                let message = format!(
                    "must be between {} and {} (got {})",
                    shown(range.start()),
                    shown(range.end()),
                    value.get_ref()
                );
                self.push(Some(value.span()), key, message);
                default
            }
            Err(err) => {
                let message = format!("is not a duration such as \"90s\" or \"6h\": {err}");
                self.push(Some(value.span()), key, message);
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
        let schedules = raw
            .schedules
            .into_iter()
            .map(|(name, schedule)| {
                let span = span_of(self.text, &["schedules", &name]);
                self.check_schedule(name, span, schedule, &bus)
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
            schedules,
            warnings: std::mem::take(&mut self.warnings),
        }
    }
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
    fn http_grants_are_parsed_and_a_bad_one_is_reported_at_its_line() {
        let dir = dir_with_plugin();
        let config = parse_in(
            dir.path(),
            "[subscribers.a]\nplugin = \"pay.wasm\"\n[subscribers.a.grants]\n\
             http = [\"https://api.example.com\", \"http://127.0.0.1:8080\"]\nhttp_ca = \"ca.pem\"\n",
        )
        .unwrap();
        let grants = &config.subscribers[0].grants;
        assert_eq!(
            grants.http,
            [
                crate::outbound::HttpGrant::parse("https://api.example.com").unwrap(),
                crate::outbound::HttpGrant::parse("http://127.0.0.1:8080").unwrap()
            ]
        );
        assert_eq!(grants.http_ca, Some(dir.path().join("ca.pem")));
        let problem = only_problem(
            parse_in(
                dir.path(),
                "[subscribers.a]\nplugin = \"pay.wasm\"\n[subscribers.a.grants]\n\
                 http = [\"https://api.example.com\",\n  \"api.example.com/v1\"]\n",
            )
            .unwrap_err(),
        );
        assert_eq!(problem.key, "subscribers.a.grants.http");
        assert_eq!(problem.line, 5, "{problem}");
        assert!(
            problem.message.contains("scheme://host[:port]"),
            "{problem}"
        );
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
        let config = parse_in(
            dir.path(),
            &format!("[http]\nread_token = \"fedcba9876543210\"\n{sub}"),
        )
        .unwrap();
        assert_eq!(
            config.http.read_token.as_ref().unwrap().0,
            "fedcba9876543210"
        );
        assert!(!format!("{:?}", config.http).contains("fedcba9876543210"));
        let err = parse_in(
            dir.path(),
            &format!("[http]\nread_token = \"short\"\n{sub}"),
        )
        .unwrap_err();
        assert_eq!(only_problem(err).key, "http.read_token");
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
            "[subscribers.a]\nplugin = \"pay.wasm\"\nretry_backoff_ms = 100\n\
             retry_backoff_max = \"6h\"\nretry_jitter = 0.25\nmax_attempts = 25\n\
             [subscribers.b]\nplugin = \"pay.wasm\"\n",
        )
        .unwrap();
        let sub = &config.subscribers[0];
        assert_eq!(sub.backoff_before(2), Duration::from_millis(100));
        assert_eq!(sub.backoff_before(3), Duration::from_millis(200));
        assert_eq!(sub.backoff_before(4), Duration::from_millis(400));
        assert_eq!(sub.backoff_before(40), Duration::from_secs(6 * 3600));
        assert_eq!(sub.backoff_before(u32::MAX), Duration::from_secs(6 * 3600));
        assert_eq!(sub.retry.jitter, 0.25);
        assert_eq!(sub.max_attempts, 25);
        // Jitter takes at most its share off.
        assert_eq!(sub.retry.delay_before(4, 1.0), Duration::from_millis(300));
        let defaults = &config.subscribers[1];
        assert_eq!(defaults.retry, crate::config::RetryPolicy::default());
        assert_eq!(defaults.backoff_before(40), Duration::from_secs(3600));
    }

    #[test]
    fn retry_settings_out_of_range_are_each_reported() {
        let dir = dir_with_plugin();
        let err = parse_in(
            dir.path(),
            "[subscribers.a]\nplugin = \"pay.wasm\"\nretry_backoff_max = \"soon\"\n\
             retry_jitter = 1.5\n[subscribers.b]\nplugin = \"pay.wasm\"\n\
             retry_backoff_max = \"90d\"\nretry_jitter = \"a lot\"\n",
        )
        .unwrap_err();
        let text = err.to_string();
        for want in [
            "subscribers.a.retry_backoff_max: is not a duration",
            "subscribers.a.retry_jitter: must be a number from 0 to 1 (got 1.5)",
            "subscribers.b.retry_backoff_max: must be between 0s and 30days (got 90d)",
            "subscribers.b.retry_jitter: must be a number from 0 to 1",
        ] {
            assert!(text.contains(want), "{want} in {text}");
        }
        let _ = MAX_RETRY_BACKOFF;
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
