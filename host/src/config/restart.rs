//! Which settings apply live and which only at start, decided here once.
//!
//! Subscribers apply live; every other table (`[redis]`, `[plugins]`,
//! `[bus]`, `[telemetry]`, `[http]`) is read once when eventhost starts:
//! the connections, the engine, the instance pool and the listener are
//! built from it. A live edit of such a setting is reported at its line,
//! and the running value stays until a restart.

use super::{Config, Problem, PublishLimits};

impl Config {
    /// Every setting that `new` changes but that applies only after a
    /// restart, each as a problem located at its line in `new`'s file.
    pub fn restart_needed(&self, new: &Config) -> Vec<Problem> {
        let (old, new_) = (self, new);
        let endpoint_key = match &new_.redis.endpoint {
            Some(super::Endpoint::Cluster(_)) => "cluster",
            _ => "url",
        };
        let changed = [
            (
                ["redis", endpoint_key],
                old.redis.endpoint != new_.redis.endpoint,
            ),
            (["redis", "prefix"], old.redis.prefix != new_.redis.prefix),
            (
                ["redis", "min_replicas_ack"],
                old.redis.min_replicas_ack != new_.redis.min_replicas_ack,
            ),
            (
                ["redis", "replicas_timeout_ms"],
                old.redis.replicas_timeout != new_.redis.replicas_timeout,
            ),
            (["plugins", "dir"], old.plugins.dir != new_.plugins.dir),
            (
                ["plugins", "watch"],
                old.plugins.watch != new_.plugins.watch,
            ),
            (
                ["plugins", "cache_dir"],
                old.plugins.cache_dir != new_.plugins.cache_dir,
            ),
            (
                ["plugins", "max_file_mb"],
                old.plugins.max_file_bytes != new_.plugins.max_file_bytes,
            ),
            (
                ["plugins", "instances"],
                old.plugins.instances != new_.plugins.instances,
            ),
            (
                ["plugins", "cache_mb"],
                old.plugins.cache_max_bytes != new_.plugins.cache_max_bytes,
            ),
            (
                ["plugins", "compile_timeout_s"],
                old.plugins.compile_timeout != new_.plugins.compile_timeout,
            ),
            (
                ["plugins", "compile_memory_mb"],
                old.plugins.compile_memory_bytes != new_.plugins.compile_memory_bytes,
            ),
            (
                ["bus", "read_batch"],
                old.bus.read_batch != new_.bus.read_batch,
            ),
            (
                ["bus", "claim_idle_ms"],
                old.bus.claim_idle != new_.bus.claim_idle,
            ),
            (
                ["bus", "max_payload_bytes"],
                old.bus.max_payload_bytes != new_.bus.max_payload_bytes,
            ),
            (["bus", "max_hops"], old.bus.max_hops != new_.bus.max_hops),
            (
                ["bus", "stream_maxlen"],
                old.bus.stream_maxlen != new_.bus.stream_maxlen,
            ),
            (["bus", "consumer"], old.bus.consumer != new_.bus.consumer),
            (
                ["bus", "partitions"],
                old.bus.partitions != new_.bus.partitions,
            ),
            (
                ["bus", "dedupe_window_s"],
                old.bus.dedupe_window != new_.bus.dedupe_window,
            ),
            (
                ["telemetry", "log_format"],
                old.telemetry.log_format != new_.telemetry.log_format,
            ),
            (["http", "listen"], old.http.listen != new_.http.listen),
            (
                ["http", "admin_token"],
                old.http.admin_token != new_.http.admin_token,
            ),
            (
                ["http", "read_token"],
                old.http.read_token != new_.http.read_token,
            ),
        ];
        changed
            .into_iter()
            .filter(|(_, changed)| *changed)
            .map(|(path, _)| new.restart_problem(&path))
            .collect()
    }

    /// `new`, but with every setting that applies only at start as it runs
    /// now (the subscribers' publish limits, which come from `[bus]`,
    /// included): the config in force after a live reload.
    pub fn keeping_start_settings(&self, mut new: Config) -> Config {
        new.redis = self.redis.clone();
        new.plugins = self.plugins.clone();
        new.bus = self.bus.clone();
        new.telemetry = self.telemetry.clone();
        new.http = self.http.clone();
        let publish = PublishLimits {
            max_bytes: self.bus.max_payload_bytes,
            max_hops: self.bus.max_hops,
        };
        for subscriber in &mut new.subscribers {
            subscriber.publish = publish;
        }
        new
    }

    /// The problem of a restart-only setting at `path` changed live: at
    /// its line, or its table's when the edit removed it.
    fn restart_problem(&self, path: &[&str; 2]) -> Problem {
        let message = "changed while eventhost runs: this setting applies only at start, so \
                       the running value stays; restart eventhost to apply it";
        let key = path.join(".");
        let span = super::problem::span_of(&self.text, path)
            .or_else(|| super::problem::span_of(&self.text, &path[..1]));
        Problem::at_span(&self.path, &self.text, span, &key, message)
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{dir_with_plugin, parse};

    const SUBSCRIBER: &str = "[subscribers.pay]\nplugin = \"pay.wasm\"\n";

    #[test]
    fn a_live_edit_of_a_start_setting_is_reported_at_its_line() {
        let dir = dir_with_plugin();
        let path = dir.path().join("eventhost.toml");
        let old = parse(&path, SUBSCRIBER).unwrap();
        let text = format!(
            "[plugins]\ninstances = 10\ncompile_timeout_s = 5\n\n[bus]\nread_batch = 7\n{SUBSCRIBER}"
        );
        let new = parse(&path, &text).unwrap();
        let problems: Vec<String> = old
            .restart_needed(&new)
            .iter()
            .map(|p| p.to_string())
            .collect();
        let file = path.display();
        assert_eq!(problems.len(), 3, "{problems:#?}");
        assert!(
            problems[0].starts_with(&format!("{file}:2:13: plugins.instances: changed while")),
            "{problems:#?}"
        );
        assert!(problems[1].starts_with(&format!("{file}:3:21: plugins.compile_timeout_s:")));
        assert!(problems[2].starts_with(&format!("{file}:6:14: bus.read_batch:")));
        assert!(problems[0].contains("restart eventhost to apply it"));
        assert!(old.restart_needed(&old).is_empty());
    }

    #[test]
    fn a_removed_start_setting_is_reported_at_its_table() {
        let dir = dir_with_plugin();
        let path = dir.path().join("eventhost.toml");
        let old = parse(&path, &format!("[bus]\nmax_hops = 5\n{SUBSCRIBER}")).unwrap();
        let new = parse(&path, &format!("[bus]\n{SUBSCRIBER}")).unwrap();
        let problems = old.restart_needed(&new);
        assert_eq!(problems.len(), 1);
        assert_eq!(
            (problems[0].line, problems[0].key.as_str()),
            (1, "bus.max_hops")
        );
    }

    #[test]
    fn start_settings_keep_their_running_values() {
        let dir = dir_with_plugin();
        let path = dir.path().join("eventhost.toml");
        let old = parse(&path, &format!("[bus]\nmax_hops = 5\n{SUBSCRIBER}")).unwrap();
        let new = parse(
            &path,
            &format!(
                "[bus]\nmax_hops = 9\n[plugins]\ninstances = 30\n{SUBSCRIBER}concurrency = 4\n"
            ),
        )
        .unwrap();
        let applied = old.keeping_start_settings(new);
        assert_eq!(applied.bus, old.bus);
        assert_eq!(applied.plugins, old.plugins);
        assert_eq!(applied.subscribers[0].publish.max_hops, 5);
        assert_eq!(applied.subscribers[0].concurrency, 4);
    }
}
