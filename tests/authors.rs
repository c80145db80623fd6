//! A plugin author's loop, in Rust, Python and JavaScript: `eventhost new`
//! → `eventhost build` → `eventhost invoke`, then the generated project's
//! own tests (`cargo test`, `pytest`, `node --test`), in a folder outside
//! this repository. Build tools come from the package registries the first
//! time (the `wasm32-wasip2` target, componentize-py, componentize-js) and
//! from eventhost's cache after that.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Instant;

use serde_json::Value;

fn eventhost(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_eventhost"))
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// new → build → invoke for `lang`, then the project's own tests with
/// `test` (a command run in the project with `EVENTHOST` set).
fn author_loop(lang: &str, test: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let out = eventhost(dir.path(), &["new", "demo", "--lang", lang]);
    assert!(out.status.success(), "new: {}", text(&out));
    let project = dir.path().join("demo");
    for file in ["README.md", "subscriber.toml"] {
        assert!(project.join(file).is_file(), "new wrote {file}");
    }

    let started = Instant::now();
    let out = eventhost(dir.path(), &["build", "demo"]);
    let built = started.elapsed();
    assert!(out.status.success(), "build: {}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let component = PathBuf::from(stdout.lines().last().unwrap().trim());
    assert!(
        component.is_file(),
        "build printed the component last: {stdout}"
    );

    let started = Instant::now();
    let out = eventhost(
        dir.path(),
        &[
            "invoke",
            component.to_str().unwrap(),
            "--type",
            "Demo",
            "--data",
            "{}",
            "--state",
            "count=41",
            "--json",
        ],
    );
    let invoked = started.elapsed();
    assert_eq!(out.status.code(), Some(0), "invoke: {}", text(&out));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["outcome"], "ok", "{report}");
    assert_eq!(report["state"]["set"]["count"], "42", "{report}");
    println!(
        "{lang}: build {:.1} s, component {} KB, first invoke (compile + run) {:.1} s",
        built.as_secs_f64(),
        std::fs::metadata(&component).unwrap().len() / 1024,
        invoked.as_secs_f64()
    );

    let out = Command::new(test[0])
        .args(&test[1..])
        .current_dir(&project)
        .env("EVENTHOST", env!("CARGO_BIN_EXE_eventhost"))
        .output()
        .unwrap_or_else(|e| panic!("running {test:?}: {e}"));
    let said = text(&out);
    assert!(
        out.status.success(),
        "the project's own tests failed: {said}"
    );
    assert!(
        !skipped(&said),
        "the project's tests ran against eventhost, none skipped: {said}"
    );
}

/// Whether a test run's output reports a skipped test: the generated tests
/// say `SKIPPED`, node's TAP `# SKIP` and `# skipped N`, pytest `N skipped`.
fn skipped(output: &str) -> bool {
    output.contains("SKIP")
        || output.lines().any(|line| {
            let line = line.trim();
            (line.starts_with("# skipped ") && line != "# skipped 0")
                || (line.contains(" passed") && line.contains(" skipped"))
        })
}

#[test]
fn a_rust_plugin_from_new_to_invoke() {
    // --nocapture: a test that skips says so on stderr.
    author_loop("rust", &["cargo", "test", "-q", "--", "--nocapture"]);
}

#[test]
fn a_python_plugin_from_new_to_invoke() {
    author_loop("python", &["python3", "-m", "pytest", "-q"]);
}

#[test]
fn a_javascript_plugin_from_new_to_invoke() {
    author_loop("js", &["node", "--test"]);
}

/// Issue 20: `eventhost build` runs the tools it installs into its cache, so
/// a tools folder another user may write (here: world-writable, as a shared
/// `EVENTHOST_CACHE_DIR` might be) is refused before anything in it runs or
/// is installed, with what to do.
#[test]
fn a_tools_folder_others_may_write_is_refused() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let tools = cache.join("tools");
    std::fs::create_dir_all(&tools).unwrap();
    std::fs::set_permissions(&cache, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::set_permissions(&tools, std::fs::Permissions::from_mode(0o777)).unwrap();
    for lang in ["python", "js"] {
        let out = eventhost(dir.path(), &["new", lang, "--lang", lang]);
        assert!(out.status.success(), "new: {}", text(&out));
        let out = Command::new(env!("CARGO_BIN_EXE_eventhost"))
            .args(["build", lang])
            .current_dir(dir.path())
            .env("EVENTHOST_CACHE_DIR", &cache)
            .output()
            .unwrap();
        let said = text(&out);
        assert_eq!(out.status.code(), Some(1), "{said}");
        assert!(
            said.contains(&format!(
                "{}: others may write it (mode 777), so another user could have replaced the \
                 build tools",
                tools.display()
            )),
            "{said}"
        );
        assert!(
            said.contains(&format!("rm -rf {}", tools.display())),
            "says what to do: {said}"
        );
        assert!(!said.contains("installing"), "nothing installed: {said}");
        assert_eq!(
            std::fs::read_dir(&tools).unwrap().count(),
            0,
            "nothing written into the tools folder"
        );
    }
}
