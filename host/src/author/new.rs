//! `eventhost new`: a ready plugin project from the embedded templates.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context as _};

use super::templates::{self, Vars};
use super::Lang;

/// Checks a project name: 1 to 64 ASCII letters, digits, `-` and `_`,
/// starting with a letter. The name becomes the folder, the subscriber name
/// (a TOML bare key), the Rust crate and the component's file name, and
/// this is what all of them accept.
pub fn validate_name(name: &str) -> anyhow::Result<()> {
    ensure!(!name.is_empty(), "the project name is empty");
    ensure!(
        name.len() <= 64,
        "the project name `{name}` is longer than 64 characters"
    );
    ensure!(
        name.starts_with(|c: char| c.is_ascii_alphabetic()),
        "the project name `{name}` must start with a letter"
    );
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
    {
        bail!("the project name `{name}` has `{bad}`: use letters, digits, `-` and `_`");
    }
    Ok(())
}

/// Checks an event type given to `--events`: `*` (every type), or ASCII
/// letters, digits and `-_.:/`. Event types end up inside TOML, Rust,
/// Python and JavaScript string literals, so anything needing escaping is
/// refused here rather than escaped four ways.
pub fn validate_event_type(event_type: &str) -> anyhow::Result<()> {
    if event_type == "*" {
        return Ok(());
    }
    ensure!(!event_type.is_empty(), "an event type is empty");
    if let Some(bad) = event_type
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "-_.:/".contains(*c)))
    {
        bail!("the event type `{event_type}` has `{bad}`: use letters, digits and `-_.:/`");
    }
    Ok(())
}

/// Writes a new `lang` plugin project named `name` into `dir/name` and
/// returns its path (absolute). The project subscribes to `events` (every
/// type when empty). It refuses a `dir/name` that exists and is not an
/// empty folder, so it never overwrites an author's work.
pub fn new_project(
    dir: &Path,
    name: &str,
    lang: Lang,
    events: &[String],
) -> anyhow::Result<PathBuf> {
    validate_name(name)?;
    let events: Vec<String> = events.iter().map(|e| e.trim().to_owned()).collect();
    for event_type in &events {
        validate_event_type(event_type)?;
    }
    let project = dir.join(name);
    if project.exists() {
        ensure!(
            project.is_dir(),
            "{} exists and is not a folder",
            project.display()
        );
        let mut entries =
            fs::read_dir(&project).with_context(|| format!("reading {}", project.display()))?;
        ensure!(
            entries.next().is_none(),
            "{} exists and is not empty: refusing to overwrite it",
            project.display()
        );
    }
    let files = templates::files(
        lang,
        &Vars {
            name: name.to_owned(),
            events,
        },
    )?;
    for (relative, contents) in files {
        let path = project.join(relative);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        }
        fs::write(&path, contents).with_context(|| format!("writing {}", path.display()))?;
    }
    std::path::absolute(&project).with_context(|| format!("resolving {}", project.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_letters_digits_dashes_and_underscores() {
        for good in ["demo", "order-audit", "a_1", "X"] {
            validate_name(good).unwrap();
        }
        for (bad, why) in [
            ("", "empty"),
            ("1demo", "start with a letter"),
            ("-x", "start with a letter"),
            ("a.b", "has `.`"),
            ("a b", "has ` `"),
            ("../x", "start with a letter"),
            ("a/b", "has `/`"),
            ("é", "start with a letter"),
        ] {
            let err = validate_name(bad).unwrap_err().to_string();
            assert!(err.contains(why), "{bad:?}: {err}");
        }
        assert!(validate_name(&"a".repeat(65)).is_err());
    }

    #[test]
    fn event_types_need_no_escaping() {
        for good in [
            "*",
            "OrderCreatedEvent",
            "order.created",
            "orders/v1:created-2",
        ] {
            validate_event_type(good).unwrap();
        }
        for bad in ["", "a\"b", "a b", "a\\b", "a{{b}}", "**"] {
            assert!(validate_event_type(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn writes_a_project_and_refuses_to_overwrite_one() {
        let dir = tempfile::tempdir().unwrap();
        let events = ["OrderCreated".to_owned()];
        let project = new_project(dir.path(), "demo", Lang::Python, &events).unwrap();
        assert!(project.is_absolute());
        assert_eq!(
            project,
            std::path::absolute(dir.path().join("demo")).unwrap()
        );
        let app = fs::read_to_string(project.join("src/app.py")).unwrap();
        assert!(app.contains("state.increment(\"count\")"));
        assert!(project.join("src/eventhost_plugin/__init__.py").is_file());
        assert!(project.join("wit/eventhost.wit").is_file());

        let err = new_project(dir.path(), "demo", Lang::Rust, &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("not empty: refusing to overwrite"), "{err}");
        assert!(!project.join("Cargo.toml").exists());

        fs::create_dir(dir.path().join("empty")).unwrap();
        new_project(dir.path(), "empty", Lang::Js, &[]).unwrap();
        assert!(dir.path().join("empty/sdk/core.js").is_file());

        fs::write(dir.path().join("file"), "").unwrap();
        assert!(new_project(dir.path(), "file", Lang::Js, &[]).is_err());
        assert!(new_project(dir.path(), "bad name", Lang::Js, &[]).is_err());
        assert!(new_project(dir.path(), "ok", Lang::Js, &["a b".to_owned()]).is_err());
        assert!(!dir.path().join("ok").exists());
    }
}
