//! Checking one `[subscribers.<name>]` table and its grants.

use super::*;
use crate::config::{RetryPolicy, DEFAULT_RETRY_BACKOFF_MAX};
use crate::outbound::HttpGrant;

impl Checker<'_> {
    pub(super) fn check_subscriber(
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
        let max_attempts = self.int(&raw.max_attempts, &key("max_attempts"), 1..=100_000, 3u32);
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
        let backoff_max = self.duration(
            &raw.retry_backoff_max,
            &key("retry_backoff_max"),
            Duration::ZERO..=MAX_RETRY_BACKOFF,
            DEFAULT_RETRY_BACKOFF_MAX,
        );
        let jitter = self.fraction(&raw.retry_jitter, &key("retry_jitter"), 0.1);
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

        let order = self.check_order(raw.order_by, raw.on_dead_letter, raw.without_key, &key);

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
            retry: RetryPolicy {
                backoff: Duration::from_millis(backoff_ms),
                backoff_max: backoff_max.max(Duration::from_millis(backoff_ms)),
                jitter,
            },
            order,
            config,
            grants,
        }
    }

    /// A number from 0 to 1 (`0.25`, or `0` and `1` as integers), or
    /// `default` when left out.
    fn fraction(&mut self, value: &Option<Spanned<toml::Value>>, key: &str, default: f64) -> f64 {
        let Some(value) = value else { return default };
        let got = match value.get_ref() {
            toml::Value::Float(f) => Some(*f),
            toml::Value::Integer(i) => Some(*i as f64),
            _ => None,
        };
        match got {
            Some(f) if (0.0..=1.0).contains(&f) => f,
            _ => {
                let message = format!("must be a number from 0 to 1 (got {})", value.get_ref());
                self.push(Some(value.span()), key, message);
                default
            }
        }
    }

    /// `order_by` and the two choices that go with it.
    fn check_order(
        &mut self,
        order_by: Option<Spanned<String>>,
        on_dead_letter: Option<Spanned<String>>,
        without_key: Option<Spanned<String>>,
        key: &dyn Fn(&str) -> String,
    ) -> Option<OrderBy> {
        let Some(field) = order_by else {
            for (choice, name) in [
                (on_dead_letter, "on_dead_letter"),
                (without_key, "without_key"),
            ] {
                if let Some(choice) = choice {
                    self.push(
                        Some(choice.span()),
                        &key(name),
                        "only means something with order_by = \"<field>\"",
                    );
                }
            }
            return None;
        };
        let text = field.get_ref();
        if text.is_empty() || text.split('.').any(str::is_empty) {
            self.push(
                Some(field.span()),
                &key("order_by"),
                "must name a field of the event's JSON, e.g. \"order_id\" or \"customer.id\"",
            );
        }
        let on_dead_letter = match on_dead_letter {
            None => OnDeadLetter::Skip,
            Some(choice) => match choice.get_ref().as_str() {
                "skip" => OnDeadLetter::Skip,
                "park" => OnDeadLetter::Park,
                other => {
                    self.push(
                        Some(choice.span()),
                        &key("on_dead_letter"),
                        format!("must be \"skip\" (the key moves on) or \"park\" (the key waits for `dlq replay` or `dlq skip`); got {other:?}"),
                    );
                    OnDeadLetter::Skip
                }
            },
        };
        let without_key = match without_key {
            None => WithoutKey::Run,
            Some(choice) => match choice.get_ref().as_str() {
                "run" => WithoutKey::Run,
                "refuse" => WithoutKey::Refuse,
                other => {
                    self.push(
                        Some(choice.span()),
                        &key("without_key"),
                        format!("must be \"run\" (handled without an order) or \"refuse\" (dead-lettered); got {other:?}"),
                    );
                    WithoutKey::Run
                }
            },
        };
        Some(OrderBy {
            field: field.into_inner(),
            on_dead_letter,
            without_key,
        })
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
        for entry in raw.http.map(Spanned::into_inner).unwrap_or_default() {
            match HttpGrant::parse(entry.get_ref()) {
                Ok(grant) => grants.http.push(grant),
                Err(message) => self.push(Some(entry.span()), &format!("{key}.http"), &message),
            }
        }
        grants.http_ca = raw.http_ca.map(|file| base.join(file.get_ref()));
        grants
    }
}
