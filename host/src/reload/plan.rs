//! What applying a new config to a running one takes: which subscribers
//! start, change and stop. Which other settings need a restart is the
//! config's to say ([`Config::restart_needed`]).

use crate::config::{Config, SubscriberConfig};

/// What applying a new config to a running one takes.
#[derive(Debug, Default, PartialEq)]
pub struct Plan {
    /// Subscribers to start.
    pub added: Vec<SubscriberConfig>,
    /// Subscribers to stop (their streams and DLQs stay).
    pub removed: Vec<String>,
    /// Subscribers whose settings changed.
    pub changed: Vec<SubscriberConfig>,
}

impl Plan {
    /// Whether the new config changes nothing that can apply live.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty()
    }
}

/// Compares the running config with a new one.
pub fn plan(old: &Config, new: &Config) -> Plan {
    let mut plan = Plan::default();
    for sub in &new.subscribers {
        match old.subscribers.iter().find(|s| s.name == sub.name) {
            None => plan.added.push(sub.clone()),
            Some(running) if running != sub => plan.changed.push(sub.clone()),
            Some(_) => {}
        }
    }
    for sub in &old.subscribers {
        if !new.subscribers.iter().any(|s| s.name == sub.name) {
            plan.removed.push(sub.name.clone());
        }
    }
    plan
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn config(dir: &Path, text: &str) -> Config {
        crate::config::parse(&dir.join("eventhost.toml"), text).unwrap()
    }

    #[test]
    fn a_plan_lists_what_changes() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("plugins")).unwrap();
        for p in ["a.wasm", "b.wasm", "c.wasm"] {
            std::fs::write(dir.path().join("plugins").join(p), b"").unwrap();
        }
        let old = config(
            dir.path(),
            "[subscribers.a]\nplugin = \"a.wasm\"\n[subscribers.b]\nplugin = \"b.wasm\"\n",
        );
        let new = config(
            dir.path(),
            "[bus]\nread_batch = 10\n[subscribers.b]\nplugin = \"b.wasm\"\nconcurrency = 2\n[subscribers.c]\nplugin = \"c.wasm\"\n",
        );
        let plan = plan(&old, &new);
        assert_eq!(
            plan.added
                .iter()
                .map(|s| s.name.as_str())
                .collect::<Vec<_>>(),
            ["c"]
        );
        assert_eq!(plan.removed, ["a"]);
        assert_eq!(plan.changed.len(), 1);
        assert_eq!(plan.changed[0].concurrency, 2);
        assert!(super::plan(&old, &old).is_empty());
    }
}
