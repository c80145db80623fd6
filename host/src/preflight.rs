//! Before a config is used: the files it names exist, and its plugins load.
//!
//! One step, shared by `eventhost check`, `eventhost run` and every config
//! reload, so all three refuse the same things with the same words: each
//! problem located at the line of the config that causes it, all of them at
//! once. A config that passes is safe to start: nothing is refused later for
//! a reason that could have been seen before anything connected.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;

use crate::config::{self, Config, ConfigError, Problem, SubscriberConfig};
use crate::plugin::{check_plugin_file, CompiledPlugin, LoadError, PluginRuntime};

/// Reads the config at `path` and checks it and the files it names; every
/// problem is in the [`ConfigError`].
pub fn config(path: &Path) -> anyhow::Result<Config> {
    let (path, text) = config::read(path)?;
    Ok(check_config(&path, &text)?)
}

/// Checks config `text` as if read from `path`, and the files it names.
pub fn check_config(path: &Path, text: &str) -> Result<Config, ConfigError> {
    let (config, mut problems) = config::check(path, text);
    if let Some(config) = &config {
        problems.extend(missing_files(config));
    }
    match config {
        Some(config) if problems.is_empty() => Ok(config),
        _ => Err(ConfigError::new(problems)),
    }
}

/// Files and folders the config names that are not there.
fn missing_files(config: &Config) -> Vec<Problem> {
    let mut problems = Vec::new();
    if !config.plugins.dir.is_dir() {
        problems.push(config.problem(
            &["plugins", "dir"],
            format!("folder {} does not exist", config.plugins.dir.display()),
        ));
    }
    // The text's check compared the paths as written; this one follows
    // symlinks, which may lead the cache into the plugins folder after all.
    if config.plugins.dir.is_dir()
        && resolve(&config.plugins.cache_dir).starts_with(resolve(&config.plugins.dir))
    {
        problems.push(config.problem(
            &["plugins", "cache_dir"],
            format!(
                "the compiled cache ({}) leads inside plugins.dir ({}) through a symlink: \
                 whoever can drop a plugin there could plant compiled code; put it elsewhere",
                config.plugins.cache_dir.display(),
                config.plugins.dir.display()
            ),
        ));
    }
    for sub in &config.subscribers {
        // A name outside the folder is a problem of the text already.
        let named_well = Path::new(&sub.plugin_file)
            .components()
            .all(|c| matches!(c, std::path::Component::Normal(_)));
        if named_well {
            // Followed if a symlink: mounted config maps are made of them.
            let problem = match std::fs::metadata(&sub.plugin) {
                Err(_) => Some(format!(
                    "plugin file {} not found; build it or fix the name",
                    sub.plugin.display()
                )),
                Ok(meta) => check_plugin_file(&meta, config.plugins.max_file_bytes)
                    .err()
                    .map(|reason| format!("plugin file {} {reason}", sub.plugin.display())),
            };
            if let Some(problem) = problem {
                problems.push(config.problem(&["subscribers", &sub.name, "plugin"], problem));
            }
        }
        for dir in &sub.grants.dirs {
            let key = ["subscribers", &sub.name, "grants", "dirs", &dir.guest];
            if !dir.host.is_dir() {
                problems
                    .push(config.problem(&key, format!("{} is not a folder", dir.host.display())));
            } else if let Some(problem) = exposed_by_grant(config, &dir.host) {
                problems.push(config.problem(&key, problem));
            }
        }
        if let Some(ca) = &sub.grants.http_ca {
            if let Err(err) = crate::outbound::tls_config(Some(ca)) {
                let key = ["subscribers", &sub.name, "grants", "http_ca"];
                problems.push(config.problem(&key, format!("{err:#}")));
            }
        }
    }
    problems
}

/// What a plugin granted the folder `host` could read that it must not:
/// the config (Redis password, other subscribers' grants), the plugins, the
/// compiled cache (native code the host loads) or the state folder (the
/// private Redis's data and password). Symlinks are resolved first, so a
/// link cannot dress one of them up as an innocent folder.
fn exposed_by_grant(config: &Config, host: &Path) -> Option<String> {
    let granted = host.canonicalize().ok()?;
    let config_dir = config.path.parent().unwrap_or(Path::new("/"));
    let protected = [
        ("the config's folder", config_dir.to_path_buf()),
        (
            "the config's folder",
            resolve(&config.path).parent()?.to_path_buf(),
        ),
        ("the plugins folder", config.plugins.dir.clone()),
        ("the compiled cache", config.plugins.cache_dir.clone()),
        ("the state folder", config.state_dir.clone()),
    ];
    let protected: Vec<(&str, PathBuf)> = protected
        .into_iter()
        .map(|(what, path)| (what, resolve(&path)))
        .collect();
    // What the grant is, before what it holds: the clearer message.
    let is = protected.iter().find(|(_, path)| *path == granted);
    let holds = protected
        .iter()
        .find(|(_, path)| path.starts_with(&granted));
    is.or(holds).map(|(what, path)| {
        let how = if *path == granted { "is" } else { "holds" };
        format!(
            "{} {how} {what} ({}), which a plugin must not read; grant a folder of its own, \
             e.g. \"data\"",
            if granted == Path::new("/") {
                "/ (the whole file system)".to_string()
            } else {
                granted.display().to_string()
            },
            path.display()
        )
    })
}

/// `path` with symlinks resolved as far as it exists (a cache folder may
/// not exist yet): its nearest existing ancestor, canonical, and the rest.
fn resolve(path: &Path) -> PathBuf {
    let mut existing = path;
    let mut rest = Vec::new();
    loop {
        if let Ok(real) = existing.canonicalize() {
            return rest.iter().rev().fold(real, |p, part| p.join(part));
        }
        match (existing.parent(), existing.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_os_string());
                existing = parent;
            }
            _ => return path.to_path_buf(),
        }
    }
}

/// The plugins of some subscribers, each file loaded once: those that
/// loaded, and those refused.
pub struct Loaded {
    pub plugins: BTreeMap<PathBuf, Arc<CompiledPlugin>>,
    pub refused: BTreeMap<PathBuf, LoadError>,
}

impl Loaded {
    /// The refusals as config problems, located at the first subscriber
    /// of `config` that names each file.
    pub fn problems(&self, config: &Config) -> Vec<Problem> {
        self.refused
            .iter()
            .map(
                |(path, err)| match config.subscribers.iter().find(|s| &s.plugin == path) {
                    Some(sub) => {
                        config.problem(&["subscribers", &sub.name, "plugin"], err.to_string())
                    }
                    None => Problem {
                        file: config.path.clone(),
                        line: 1,
                        column: 1,
                        key: String::new(),
                        message: err.to_string(),
                    },
                },
            )
            .collect()
    }

    /// Every plugin, or an error listing each refusal at its config line.
    pub fn all(self, config: &Config) -> anyhow::Result<BTreeMap<PathBuf, Arc<CompiledPlugin>>> {
        if self.refused.is_empty() {
            return Ok(self.plugins);
        }
        let problems = ConfigError::new(self.problems(config));
        let n = problems.problems.len();
        let lines: Vec<String> = problems.problems.iter().map(|p| p.to_string()).collect();
        anyhow::bail!(
            "{n} plugin{} refused:\n  {}",
            if n == 1 { " was" } else { "s were" },
            lines.join("\n  ")
        )
    }
}

/// Compiles (or takes from the compiled cache) the plugin of every one of
/// `subscribers`, off the async threads; a refusal does not stop the others.
pub async fn load_plugins(
    runtime: &Arc<PluginRuntime>,
    subscribers: &[SubscriberConfig],
) -> Loaded {
    let paths: BTreeSet<PathBuf> = subscribers.iter().map(|s| s.plugin.clone()).collect();
    let mut loaded = Loaded {
        plugins: BTreeMap::new(),
        refused: BTreeMap::new(),
    };
    for path in paths {
        match load(runtime, &path).await {
            Ok(plugin) => {
                tracing::info!(
                    plugin = %path.display(),
                    build = plugin.short_digest(),
                    "loaded in {:?}{}",
                    plugin.load_time,
                    if plugin.cached { " (compiled cache)" } else { "" }
                );
                loaded.plugins.insert(path, plugin);
            }
            Err(err) => {
                loaded.refused.insert(path, err);
            }
        }
    }
    loaded
}

/// Loads one plugin file on tokio's blocking threads.
pub async fn load(
    runtime: &Arc<PluginRuntime>,
    path: &Path,
) -> Result<Arc<CompiledPlugin>, LoadError> {
    let runtime = runtime.clone();
    let file = path.to_path_buf();
    tokio::task::spawn_blocking(move || runtime.load(&file))
        .await
        .context("plugin loader crashed")
        .map_err(|err| LoadError {
            path: path.to_path_buf(),
            reason: format!("{err:#}"),
        })?
        .map(Arc::new)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::dir_with_plugin;

    /// The keys of the problems reported, in order.
    fn problem_keys(err: &ConfigError) -> Vec<&str> {
        err.problems.iter().map(|p| p.key.as_str()).collect()
    }

    fn parse_in(dir: &Path, text: &str) -> Result<Config, ConfigError> {
        check_config(&dir.join("eventhost.toml"), text)
    }

    #[test]
    fn a_missing_plugins_folder_is_a_problem() {
        let dir = tempfile::tempdir().unwrap();
        let err = parse_in(dir.path(), "[plugins]\ndir = \"nowhere\"\n").unwrap_err();
        assert_eq!(problem_keys(&err), ["plugins.dir"]);
        assert_eq!(err.problems[0].line, 2);
        assert!(err.problems[0].message.contains("does not exist"), "{err}");
    }
    #[test]
    fn every_bad_value_is_reported_at_once() {
        let dir = dir_with_plugin();
        let err = parse_in(
            dir.path(),
            r#"[subscribers."bad:name"]
plugin = "missing.wasm"
events = []
concurrency = 0
memory_mb = 100000
[subscribers."bad:name".config]
list = [1, 2]
"#,
        )
        .unwrap_err();
        let text = err.to_string();
        assert_eq!(
            problem_keys(&err),
            [
                "subscribers.bad:name",
                "subscribers.bad:name.plugin",
                "subscribers.bad:name.events",
                "subscribers.bad:name.concurrency",
                "subscribers.bad:name.memory_mb",
                "subscribers.bad:name.config.list",
            ],
            "{text}"
        );
        assert!(text.contains("eventhost.toml:4:15: subscribers.bad:name.concurrency: must be between 1 and 1024 (got 0)"), "{text}");
        assert!(text.contains("missing.wasm not found"), "{text}");
    }

    #[test]
    fn bad_grants_name_the_key() {
        let dir = dir_with_plugin();
        let err = parse_in(
            dir.path(),
            "[subscribers.a]\nplugin = \"pay.wasm\"\n[subscribers.a.grants]\n\
             env = { \"A=B\" = \"x\" }\ndirs = { \"data\" = \"nowhere\" }\nnetwork = true\n",
        )
        .unwrap_err();
        let text = err.to_string();
        assert_eq!(err.problems.len(), 1, "unknown keys stop the check: {text}");
        assert!(
            text.contains("eventhost.toml:6:1: subscribers.a.grants"),
            "{text}"
        );
        assert!(text.contains("network"), "{text}");

        let err = parse_in(
            dir.path(),
            "[subscribers.a]\nplugin = \"pay.wasm\"\n[subscribers.a.grants]\n\
             env = { \"A=B\" = \"x\" }\ndirs = { \"data\" = \"nowhere\" }\n",
        )
        .unwrap_err();
        let text = err.to_string();
        assert_eq!(
            problem_keys(&err),
            [
                "subscribers.a.grants.env.A=B",
                "subscribers.a.grants.dirs.data",
                "subscribers.a.grants.dirs.data",
            ],
            "{text}"
        );
        assert!(text.contains("must be absolute"), "{text}");
        assert!(text.contains("nowhere is not a folder"), "{text}");
    }

    #[test]
    fn a_grant_of_what_holds_the_config_plugins_cache_or_state_is_refused() {
        let dir = dir_with_plugin();
        std::fs::create_dir(dir.path().join("rates")).unwrap();
        std::fs::create_dir_all(dir.path().join(".eventhost/cache")).unwrap();
        std::os::unix::fs::symlink(dir.path(), dir.path().join("rates/up")).unwrap();
        std::os::unix::fs::symlink(dir.path().join("plugins"), dir.path().join("innocent"))
            .unwrap();
        let grant = |host: &str| {
            format!(
                "[subscribers.a]\nplugin = \"pay.wasm\"\n[subscribers.a.grants]\n\
                 dirs = {{ \"/x\" = \"{host}\" }}\n"
            )
        };
        for (host, says) in [
            ("/", "/ (the whole file system) holds the config's folder"),
            (".", "is the config's folder"),
            ("", "is the config's folder"),
            ("plugins", "is the plugins folder"),
            ("innocent", "is the plugins folder"),
            ("rates/up", "is the config's folder"),
            (".eventhost", "is the state folder"),
            (".eventhost/cache", "is the compiled cache"),
            ("..", "holds the config's folder"),
        ] {
            let err = parse_in(dir.path(), &grant(host)).unwrap_err();
            assert_eq!(
                problem_keys(&err),
                ["subscribers.a.grants.dirs./x"],
                "{host}: {err}"
            );
            assert_eq!(err.problems[0].line, 4, "{host}: {err}");
            assert!(err.to_string().contains(says), "{host}: {err}");
        }
        parse_in(dir.path(), &grant("rates")).expect("a folder of its own is fine");
        // A cache elsewhere is protected where it is, existing or not.
        let err = parse_in(
            dir.path(),
            &format!("[plugins]\ncache_dir = \"rates/cache\"\n{}", grant("rates")),
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("holds the compiled cache"),
            "{err}"
        );
    }

    #[test]
    fn a_plugin_that_is_no_regular_file_or_too_big_is_a_problem() {
        let dir = dir_with_plugin();
        std::os::unix::fs::symlink("/dev/zero", dir.path().join("plugins/zero.wasm")).unwrap();
        std::fs::File::create(dir.path().join("plugins/big.wasm"))
            .unwrap()
            .set_len(2 << 20)
            .unwrap();
        let err = parse_in(
            dir.path(),
            "[plugins]\nmax_file_mb = 1\n[subscribers.a]\nplugin = \"zero.wasm\"\n\
             [subscribers.b]\nplugin = \"big.wasm\"\n",
        )
        .unwrap_err();
        let text = err.to_string();
        assert_eq!(
            problem_keys(&err),
            ["subscribers.a.plugin", "subscribers.b.plugin"],
            "{text}"
        );
        assert!(text.contains("zero.wasm is not a regular file"), "{text}");
        assert!(
            text.contains("big.wasm is 2.0 MiB, over the limit of 1 MiB"),
            "{text}"
        );
    }
}
