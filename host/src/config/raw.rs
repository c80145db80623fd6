//! The config file as written: raw TOML structs that keep every value's
//! position, so a problem found while checking them points at its line.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub redis: RawRedis,
    #[serde(default)]
    pub plugins: RawPlugins,
    #[serde(default)]
    pub bus: RawBus,
    #[serde(default)]
    pub telemetry: RawTelemetry,
    #[serde(default)]
    pub http: RawHttp,
    #[serde(default)]
    pub subscribers: BTreeMap<String, RawSubscriber>,
    #[serde(default)]
    pub schedules: BTreeMap<String, RawSchedule>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawRedis {
    pub url: Option<Spanned<String>>,
    pub cluster: Option<Spanned<Vec<Spanned<String>>>>,
    pub prefix: Option<Spanned<String>>,
    pub min_replicas_ack: Option<Spanned<i64>>,
    pub replicas_timeout_ms: Option<Spanned<i64>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawPlugins {
    pub dir: Option<Spanned<String>>,
    pub watch: Option<bool>,
    pub cache_dir: Option<Spanned<String>>,
    pub max_file_mb: Option<Spanned<i64>>,
    pub instances: Option<Spanned<i64>>,
    pub cache_mb: Option<Spanned<i64>>,
    pub compile_timeout_s: Option<Spanned<i64>>,
    pub compile_memory_mb: Option<Spanned<i64>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawBus {
    pub read_batch: Option<Spanned<i64>>,
    pub claim_idle_ms: Option<Spanned<i64>>,
    pub max_payload_bytes: Option<Spanned<i64>>,
    pub max_hops: Option<Spanned<i64>>,
    pub stream_maxlen: Option<Spanned<i64>>,
    pub consumer: Option<Spanned<String>>,
    pub partitions: Option<Spanned<i64>>,
    pub dedupe_window_s: Option<Spanned<i64>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawTelemetry {
    /// Before `[http] listen` existed; still read, with a warning.
    pub metrics: Option<Spanned<String>>,
    pub log_format: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawHttp {
    pub listen: Option<Spanned<String>>,
    pub admin_token: Option<Spanned<String>>,
    pub read_token: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSubscriber {
    pub plugin: Spanned<String>,
    pub events: Option<Spanned<Vec<Spanned<String>>>>,
    pub concurrency: Option<Spanned<i64>>,
    pub max_attempts: Option<Spanned<i64>>,
    pub timeout_ms: Option<Spanned<i64>>,
    pub memory_mb: Option<Spanned<i64>>,
    pub effects_mb: Option<Spanned<i64>>,
    pub retry_backoff_ms: Option<Spanned<i64>>,
    pub retry_backoff_max: Option<Spanned<String>>,
    pub retry_jitter: Option<Spanned<toml::Value>>,
    pub order_by: Option<Spanned<String>>,
    pub on_dead_letter: Option<Spanned<String>>,
    pub without_key: Option<Spanned<String>>,
    #[serde(default)]
    pub config: BTreeMap<Spanned<String>, Spanned<toml::Value>>,
    #[serde(default)]
    pub grants: RawGrants,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawGrants {
    #[serde(default)]
    pub env: BTreeMap<Spanned<String>, Spanned<toml::Value>>,
    #[serde(default)]
    pub dirs: BTreeMap<Spanned<String>, Spanned<String>>,
    pub http: Option<Spanned<Vec<Spanned<String>>>>,
    pub http_ca: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSchedule {
    pub event_type: Option<Spanned<String>>,
    pub cron: Option<Spanned<String>>,
    pub every: Option<Spanned<String>>,
    pub data: Option<Spanned<toml::Value>>,
    pub missed: Option<Spanned<String>>,
}
