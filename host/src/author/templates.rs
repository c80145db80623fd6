//! The project templates of `eventhost new`, embedded in the binary.
//!
//! Template files (`host/templates/<lang>/*.tmpl`) have `{{placeholders}}`;
//! everything else a project carries (the WIT, the SDK) is embedded verbatim
//! from its single source in the repository, so a generated project always
//! matches the host it came from. `host/templates/README.md` lists the
//! placeholders.

use std::path::PathBuf;

use anyhow::{bail, Context as _};

use super::{Lang, COMPONENTIZE_JS_VERSION, COMPONENTIZE_PY_VERSION};

/// How one file of a project is produced.
#[derive(Clone, Copy)]
enum Body {
    /// A template: placeholders substituted.
    Template(&'static str),
    /// Copied as is (sources of other languages may contain `{{`).
    Verbatim(&'static str),
}

/// One file of a project: its path inside the project and its body.
struct Entry {
    path: &'static str,
    body: Body,
}

const fn t(path: &'static str, text: &'static str) -> Entry {
    Entry {
        path,
        body: Body::Template(text),
    }
}

const fn v(path: &'static str, text: &'static str) -> Entry {
    Entry {
        path,
        body: Body::Verbatim(text),
    }
}

/// The contract, which every project carries.
pub(crate) const WIT: &str = include_str!("../../../wit/eventhost.wit");
/// Version 0.2.0 of the contract, which every SDK builds against (the Python
/// and JavaScript ones queue requests with its `send-after-commit`).
pub(crate) const WIT_V0_2: &str = include_str!("../../../wit/v0.2/eventhost.wit");
/// Version 0.3.0 of the contract, which the Rust SDK builds against (its
/// `publish_later` and `retry_after`).
pub(crate) const WIT_V0_3: &str = include_str!("../../../wit/v0.3/eventhost.wit");

/// The repository's workspace manifest: the vendored Rust SDK inherits its
/// `[workspace.package]` settings.
const WORKSPACE_MANIFEST: &str = include_str!("../../../Cargo.toml");

/// The Rust SDK's sources. Its bindings come from `path: "../../wit/v0.3"`,
/// relative to its manifest: vendored at `vendor/eventhost-plugin/`, that is
/// the project's `wit/v0.3/`, as it is the repository's in `plugins/sdk`.
pub(crate) const RUST_SDK_MANIFEST: &str = include_str!("../../../plugins/sdk/Cargo.toml");
pub(crate) const RUST_SDK_LIB: &str = include_str!("../../../plugins/sdk/src/lib.rs");

/// The tool manifest and lock file pinning componentize-js and its whole
/// dependency tree (the JS probe's, which CI builds).
pub(crate) const JS_TOOL_PACKAGE: &str = include_str!("../../../plugins/js-probe/package.json");
pub(crate) const JS_TOOL_LOCK: &str = include_str!("../../../plugins/js-probe/package-lock.json");

const SUBSCRIBER: Entry = t(
    "subscriber.toml",
    include_str!("../../templates/common/subscriber.toml.tmpl"),
);

const RUST: &[Entry] = &[
    t(
        "Cargo.toml",
        include_str!("../../templates/rust/Cargo.toml.tmpl"),
    ),
    t(
        "src/lib.rs",
        include_str!("../../templates/rust/src/lib.rs.tmpl"),
    ),
    t(
        "tests/invoke.rs",
        include_str!("../../templates/rust/tests/invoke.rs.tmpl"),
    ),
    t(
        "README.md",
        include_str!("../../templates/rust/README.md.tmpl"),
    ),
    t(
        ".gitignore",
        include_str!("../../templates/rust/gitignore.tmpl"),
    ),
    SUBSCRIBER,
    v("wit/eventhost.wit", WIT),
    v("wit/v0.3/eventhost.wit", WIT_V0_3),
    v("vendor/eventhost-plugin/Cargo.toml", RUST_SDK_MANIFEST),
    v("vendor/eventhost-plugin/src/lib.rs", RUST_SDK_LIB),
];

const PYTHON: &[Entry] = &[
    t(
        "pyproject.toml",
        include_str!("../../templates/python/pyproject.toml.tmpl"),
    ),
    t(
        "src/app.py",
        include_str!("../../templates/python/src/app.py.tmpl"),
    ),
    t(
        "tests/test_app.py",
        include_str!("../../templates/python/tests/test_app.py.tmpl"),
    ),
    t(
        "README.md",
        include_str!("../../templates/python/README.md.tmpl"),
    ),
    t(
        ".gitignore",
        include_str!("../../templates/python/gitignore.tmpl"),
    ),
    SUBSCRIBER,
    // Their build reads `wit/` itself: the 0.2.0 contract, as the SDK's.
    v("wit/eventhost.wit", WIT_V0_2),
    v(
        "src/eventhost_plugin/__init__.py",
        include_str!("../../../plugins/sdk-python/eventhost_plugin/__init__.py"),
    ),
    v(
        "src/eventhost_plugin/testing.py",
        include_str!("../../../plugins/sdk-python/eventhost_plugin/testing.py"),
    ),
    v(
        "src/eventhost_plugin/after_commit.py",
        include_str!("../../../plugins/sdk-python/eventhost_plugin/after_commit.py"),
    ),
    v(
        "src/eventhost_plugin/http.py",
        include_str!("../../../plugins/sdk-python/eventhost_plugin/http.py"),
    ),
    v(
        "src/eventhost_plugin/py.typed",
        include_str!("../../../plugins/sdk-python/eventhost_plugin/py.typed"),
    ),
];

const JS: &[Entry] = &[
    t(
        "package.json",
        include_str!("../../templates/js/package.json.tmpl"),
    ),
    t("app.js", include_str!("../../templates/js/app.js.tmpl")),
    t(
        "test/app.test.js",
        include_str!("../../templates/js/test/app.test.js.tmpl"),
    ),
    t(
        "README.md",
        include_str!("../../templates/js/README.md.tmpl"),
    ),
    t(
        ".gitignore",
        include_str!("../../templates/js/gitignore.tmpl"),
    ),
    SUBSCRIBER,
    // componentize-js reads `wit/` itself: the 0.2.0 contract, as the SDK's.
    v("wit/eventhost.wit", WIT_V0_2),
    v(
        "sdk/index.js",
        include_str!("../../../plugins/sdk-js/index.js"),
    ),
    v(
        "sdk/core.js",
        include_str!("../../../plugins/sdk-js/core.js"),
    ),
    v(
        "sdk/testing.js",
        include_str!("../../../plugins/sdk-js/testing.js"),
    ),
    v(
        "sdk/index.d.ts",
        include_str!("../../../plugins/sdk-js/index.d.ts"),
    ),
    v(
        "sdk/core.d.ts",
        include_str!("../../../plugins/sdk-js/core.d.ts"),
    ),
    v(
        "sdk/testing.d.ts",
        include_str!("../../../plugins/sdk-js/testing.d.ts"),
    ),
];

fn entries(lang: Lang) -> &'static [Entry] {
    match lang {
        Lang::Rust => RUST,
        Lang::Python => PYTHON,
        Lang::Js => JS,
    }
}

/// The values of a project's placeholders.
#[derive(Debug, Clone)]
pub(crate) struct Vars {
    /// The project and subscriber name, as given.
    pub name: String,
    /// The events to subscribe to; empty means every type.
    pub events: Vec<String>,
}

impl Vars {
    /// `name` with `-` as `_`: the crate, module and component file name.
    pub fn crate_name(&self) -> String {
        self.name.replace('-', "_")
    }

    /// The `(placeholder, value)` pairs for `lang`.
    fn pairs(&self, lang: Lang) -> anyhow::Result<Vec<(&'static str, String)>> {
        let crate_name = self.crate_name();
        let events: Vec<&str> = if self.events.is_empty() {
            vec!["*"]
        } else {
            self.events.iter().map(String::as_str).collect()
        };
        let events_toml = format!(
            "[{}]",
            events
                .iter()
                .map(|e| format!("\"{e}\""))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let events_text = if events.contains(&"*") {
            "every event type".to_owned()
        } else {
            events
                .iter()
                .map(|e| format!("`{e}`"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let first_event = events
            .iter()
            .find(|e| **e != "*")
            .copied()
            .unwrap_or("Demo")
            .to_owned();
        let wasm_path = match lang {
            Lang::Rust => format!("target/wasm32-wasip2/release/{crate_name}.wasm"),
            Lang::Python | Lang::Js => format!("build/{crate_name}.wasm"),
        };
        let workspace_package = match lang {
            Lang::Rust => workspace_package()?,
            Lang::Python | Lang::Js => String::new(),
        };
        Ok(vec![
            ("name", self.name.clone()),
            ("crate_name", crate_name),
            ("events_toml", events_toml),
            ("events_text", events_text),
            ("first_event", first_event),
            ("wasm_path", wasm_path),
            ("workspace_package", workspace_package),
            (
                "componentize_py_version",
                COMPONENTIZE_PY_VERSION.to_owned(),
            ),
            (
                "componentize_js_version",
                COMPONENTIZE_JS_VERSION.to_owned(),
            ),
        ])
    }
}

/// The files of a new `lang` project: (path inside the project, contents).
pub(crate) fn files(lang: Lang, vars: &Vars) -> anyhow::Result<Vec<(PathBuf, String)>> {
    let pairs = vars.pairs(lang)?;
    entries(lang)
        .iter()
        .map(|entry| {
            let text = match entry.body {
                Body::Template(text) => render(text, &pairs)
                    .with_context(|| format!("rendering the {lang} template {}", entry.path))?,
                Body::Verbatim(text) => text.to_owned(),
            };
            Ok((PathBuf::from(entry.path), text))
        })
        .collect()
}

/// Substitutes every `{{key}}` of `pairs` in `template`. A `{{word}}` that is
/// not a known key is an error, so a typo in a template fails the unit
/// tests instead of reaching an author; other `{{` (code) are left alone.
pub(crate) fn render(template: &str, pairs: &[(&str, String)]) -> anyhow::Result<String> {
    let mut out = String::with_capacity(template.len() + 256);
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let key = after.find("}}").map(|end| &after[..end]).filter(|k| {
            !k.is_empty()
                && k.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        });
        match key {
            Some(key) => {
                let Some((_, value)) = pairs.iter().find(|(k, _)| *k == key) else {
                    bail!("unknown placeholder {{{{{key}}}}}");
                };
                out.push_str(value);
                rest = &after[key.len() + 2..];
            }
            None => {
                out.push_str("{{");
                rest = after;
            }
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// The repository's `[workspace.package]` table as TOML lines, for the Rust
/// template's own workspace (the vendored SDK's manifest inherits from it).
fn workspace_package() -> anyhow::Result<String> {
    let manifest: toml::Table =
        toml::from_str(WORKSPACE_MANIFEST).context("parsing the embedded workspace Cargo.toml")?;
    let package = manifest
        .get("workspace")
        .and_then(|w| w.get("package"))
        .and_then(|p| p.as_table())
        .context("the embedded workspace Cargo.toml has no [workspace.package]")?;
    Ok(toml::to_string(package)
        .context("writing [workspace.package]")?
        .trim_end()
        .to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(events: &[&str]) -> Vars {
        Vars {
            name: "order-audit".into(),
            events: events.iter().map(|e| e.to_string()).collect(),
        }
    }

    fn file(lang: Lang, vars: &Vars, path: &str) -> String {
        files(lang, vars)
            .unwrap()
            .into_iter()
            .find(|(p, _)| p == &PathBuf::from(path))
            .unwrap_or_else(|| panic!("no {path}"))
            .1
    }

    #[test]
    fn render_substitutes_known_keys_and_leaves_code_alone() {
        let pairs = [("name", "x".to_owned())];
        assert_eq!(render("a {{name}} b {{name}}", &pairs).unwrap(), "a x b x");
        assert_eq!(
            render("f\"{{\" {{ x }} {{A}}", &pairs).unwrap(),
            "f\"{{\" {{ x }} {{A}}"
        );
        assert_eq!(render("{{", &pairs).unwrap(), "{{");
        let err = render("{{nmae}}", &pairs).unwrap_err().to_string();
        assert!(err.contains("unknown placeholder {{nmae}}"), "{err}");
    }

    #[test]
    fn every_template_renders_completely() {
        for lang in Lang::ALL {
            for (path, text) in files(lang, &vars(&["OrderCreated", "OrderPaid"])).unwrap() {
                let is_template = entries(lang).iter().any(|e| {
                    path == std::path::Path::new(e.path) && matches!(e.body, Body::Template(_))
                });
                if is_template {
                    for key in [
                        "name",
                        "crate_name",
                        "events_toml",
                        "first_event",
                        "wasm_path",
                    ] {
                        assert!(
                            !text.contains(&format!("{{{{{key}}}}}")),
                            "{lang} {path:?} kept {key}"
                        );
                    }
                }
                assert!(
                    !text.is_empty() || path.ends_with("py.typed"),
                    "{lang} {path:?} is empty"
                );
            }
        }
    }

    #[test]
    fn every_project_has_the_wit_a_readme_a_test_and_the_subscriber_table() {
        for lang in Lang::ALL {
            let v = vars(&["OrderCreated", "OrderPaid"]);
            // Rust keeps 0.1.0 at the top (its SDK reads wit/v0.3/); the
            // Python and JavaScript builds read wit/ itself, so it is 0.2.0.
            let wit = if lang == Lang::Rust { WIT } else { WIT_V0_2 };
            assert_eq!(file(lang, &v, "wit/eventhost.wit"), wit, "{lang}");
            let table = file(lang, &v, "subscriber.toml");
            let parsed: toml::Table = toml::from_str(&table).unwrap();
            let sub = &parsed["subscribers"]["order-audit"];
            assert_eq!(sub["plugin"].as_str(), Some("order_audit.wasm"));
            assert_eq!(sub["events"].as_array().unwrap().len(), 2);
            let readme = file(lang, &v, "README.md");
            assert!(readme.contains("eventhost build ."), "{lang}");
            assert!(readme.contains("--type OrderCreated"), "{lang}");
            assert!(readme.contains("[subscribers.order-audit]"), "{lang}");
            let test = match lang {
                Lang::Rust => file(lang, &v, "tests/invoke.rs"),
                Lang::Python => file(lang, &v, "tests/test_app.py"),
                Lang::Js => file(lang, &v, "test/app.test.js"),
            };
            assert!(
                test.contains("count=41") && test.contains("\"OrderCreated\""),
                "{lang}"
            );
        }
    }

    #[test]
    fn without_events_the_subscriber_takes_every_type() {
        let table = file(Lang::Python, &vars(&[]), "subscriber.toml");
        assert!(table.contains("events = [\"*\"]"), "{table}");
        let test = file(Lang::Python, &vars(&["*"]), "tests/test_app.py");
        assert!(test.contains("\"--type\", \"Demo\""), "{test}");
    }

    #[test]
    fn the_rust_project_is_its_own_workspace_and_the_vendored_sdk_finds_the_wit() {
        let manifest: toml::Table =
            toml::from_str(&file(Lang::Rust, &vars(&[]), "Cargo.toml")).unwrap();
        assert_eq!(manifest["package"]["name"].as_str(), Some("order-audit"));
        let package = manifest["workspace"]["package"].as_table().unwrap();
        // Whatever the SDK inherits, the template's workspace provides.
        let sdk: toml::Table = toml::from_str(RUST_SDK_MANIFEST).unwrap();
        for (key, value) in sdk["package"].as_table().unwrap() {
            if value.get("workspace").is_some() {
                assert!(package.contains_key(key), "[workspace.package] lacks {key}");
            }
        }
        assert_eq!(
            manifest["dependencies"]["eventhost-plugin"]["path"].as_str(),
            Some("vendor/eventhost-plugin")
        );
        // vendor/eventhost-plugin/../../wit/v0.3 is the project's
        // wit/v0.3/, which the project carries.
        assert!(RUST_SDK_LIB.contains("path: \"../../wit/v0.3\""));
        assert_eq!(
            file(Lang::Rust, &vars(&[]), "wit/v0.3/eventhost.wit"),
            WIT_V0_3
        );
    }

    #[test]
    fn the_js_tool_lock_pins_the_componentize_js_version() {
        let package: serde_json::Value = serde_json::from_str(JS_TOOL_PACKAGE).unwrap();
        assert_eq!(
            package["devDependencies"]["@bytecodealliance/componentize-js"],
            COMPONENTIZE_JS_VERSION
        );
        let lock: serde_json::Value = serde_json::from_str(JS_TOOL_LOCK).unwrap();
        assert_eq!(
            lock["packages"]["node_modules/@bytecodealliance/componentize-js"]["version"],
            COMPONENTIZE_JS_VERSION
        );
    }
}
