//! `eventhost build`: a plugin project of any language → a component.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, ensure, Context as _};

use super::{http_wit, tools, Lang};

/// Says which language the project in `dir` is written in, from the files
/// that each toolchain needs: `Cargo.toml` (Rust), else `pyproject.toml`,
/// `src/app.py` or `app.py` (Python), else `package.json` (JavaScript).
/// Checked in that order, so a Rust project with a `package.json` for its
/// tooling is still Rust.
pub fn detect_lang(dir: &Path) -> anyhow::Result<Lang> {
    ensure!(dir.is_dir(), "{} is not a folder", dir.display());
    let has = |name: &str| dir.join(name).is_file();
    if has("Cargo.toml") {
        Ok(Lang::Rust)
    } else if has("pyproject.toml") || has("src/app.py") || has("app.py") {
        Ok(Lang::Python)
    } else if has("package.json") {
        Ok(Lang::Js)
    } else {
        bail!(
            "{} is not a plugin project: it has no Cargo.toml, pyproject.toml, app.py or \
             package.json (`eventhost new NAME --lang rust|python|js` writes one)",
            dir.display()
        )
    }
}

/// Builds the plugin project in `dir` into a component with its language's
/// toolchain at pinned versions, installing the pinned tools into the cache
/// the first time, and returns the component's absolute path. The tools'
/// progress goes to stderr, so the caller can print the path as the last
/// line of stdout for scripts (`eventhost invoke "$(eventhost build | tail
/// -n 1)"`).
pub fn build_project(dir: &Path) -> anyhow::Result<PathBuf> {
    let dir = dir
        .canonicalize()
        .with_context(|| format!("cannot open the project folder {}", dir.display()))?;
    let lang = detect_lang(&dir)?;
    eprintln!("building the {lang} plugin in {}", dir.display());
    let component = match lang {
        Lang::Rust => build_rust(&dir),
        Lang::Python => build_python(&dir),
        Lang::Js => build_js(&dir),
    }
    .with_context(|| format!("building the {lang} plugin in {}", dir.display()))?;
    component
        .canonicalize()
        .with_context(|| format!("the build wrote no component at {}", component.display()))
}

fn build_rust(dir: &Path) -> anyhow::Result<PathBuf> {
    let cargo = tools::cargo(dir)?;
    tools::wasm32_wasip2(dir)?;
    let manifest = dir.join("Cargo.toml");
    let out = Command::new(cargo)
        .args(["build", "--release", "--target", "wasm32-wasip2"])
        .args([
            "--message-format",
            "json-render-diagnostics",
            "--manifest-path",
        ])
        .arg(&manifest)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .context("cannot run cargo")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!("cargo build failed ({})", out.status);
    }
    cargo_component(&stdout, &manifest).with_context(|| {
        format!(
            "cargo built no .wasm library for {}: is it a `crate-type = [\"cdylib\"]` library?",
            manifest.display()
        )
    })
}

/// The `.wasm` a cargo build (`--message-format json`) made for the package
/// of `manifest`: its last `compiler-artifact` of kind `cdylib`.
fn cargo_component(messages: &str, manifest: &Path) -> Option<PathBuf> {
    let manifest = manifest
        .canonicalize()
        .unwrap_or_else(|_| manifest.to_owned());
    messages
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|m| m["reason"] == "compiler-artifact")
        .filter(|m| {
            m["manifest_path"].as_str().is_some_and(|p| {
                let p = Path::new(p);
                p.canonicalize().map_or(p == manifest, |p| p == manifest)
            })
        })
        .filter(|m| {
            m["target"]["kind"]
                .as_array()
                .is_some_and(|kinds| kinds.iter().any(|k| k == "cdylib"))
        })
        .filter_map(|m| {
            m["filenames"]
                .as_array()?
                .iter()
                .filter_map(|f| f.as_str())
                .find(|f| f.ends_with(".wasm"))
                .map(PathBuf::from)
        })
        .next_back()
}

/// The component's file name stem: the manifest's name with everything but
/// letters, digits and `_` as `_` (`order-audit` → `order_audit`), else the
/// folder's name.
fn stem(manifest_name: Option<&str>, dir: &Path) -> String {
    let raw = manifest_name
        .map(|n| n.rsplit('/').next().unwrap_or(n).to_owned())
        .or_else(|| dir.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "plugin".to_owned());
    let stem: String = raw
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if stem.is_empty() {
        "plugin".to_owned()
    } else {
        stem
    }
}

/// The project's `wit/` folder, which componentize-py and componentize-js
/// build against.
fn wit_dir(dir: &Path) -> anyhow::Result<PathBuf> {
    let wit = dir.join("wit");
    ensure!(
        wit.is_dir(),
        "{} has no wit/ folder with eventhost.wit (projects from `eventhost new` carry one)",
        dir.display()
    );
    Ok(wit)
}

/// Builds into `dir/build/<stem>.wasm` through a temporary file, so a failed
/// build leaves no half-written component where a watching host could see it.
fn build_into(
    dir: &Path,
    stem: &str,
    write: impl FnOnce(&Path) -> anyhow::Result<()>,
) -> anyhow::Result<PathBuf> {
    let out_dir = dir.join("build");
    fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let out = out_dir.join(format!("{stem}.wasm"));
    let partial = out_dir.join(format!(".{stem}.wasm.partial"));
    let _ = fs::remove_file(&partial);
    let result = write(&partial);
    if let Err(err) = result {
        let _ = fs::remove_file(&partial);
        return Err(err);
    }
    ensure!(
        partial.is_file(),
        "the build tool wrote no {}",
        partial.display()
    );
    fs::rename(&partial, &out)
        .with_context(|| format!("moving the component to {}", out.display()))?;
    Ok(out)
}

/// The Python source folder and module: `src/app.py` (what `eventhost new`
/// writes; only `src/` goes into the component), else `app.py` at the top.
fn python_app(dir: &Path) -> anyhow::Result<PathBuf> {
    if dir.join("src/app.py").is_file() {
        Ok(dir.join("src"))
    } else if dir.join("app.py").is_file() {
        Ok(dir.to_owned())
    } else {
        bail!("{} has neither src/app.py nor app.py", dir.display())
    }
}

/// What `pyproject.toml` says about the build: the project's name, and
/// `[tool.eventhost] python-path`, folders (relative to the project) whose
/// modules go into the component too, e.g. an SDK or a library shared by
/// several plugins of one repository.
#[derive(Debug, Default, PartialEq)]
struct PyProject {
    name: Option<String>,
    python_path: Vec<PathBuf>,
}

fn py_project(dir: &Path) -> anyhow::Result<PyProject> {
    let Ok(text) = fs::read_to_string(dir.join("pyproject.toml")) else {
        return Ok(PyProject::default());
    };
    let table: toml::Table = toml::from_str(&text).context("parsing pyproject.toml")?;
    let name = table
        .get("project")
        .and_then(|p| p.get("name"))
        .and_then(|n| n.as_str())
        .map(str::to_owned);
    let paths = table
        .get("tool")
        .and_then(|t| t.get("eventhost"))
        .and_then(|e| e.get("python-path"));
    let python_path = match paths {
        None => Vec::new(),
        Some(toml::Value::Array(items)) => items
            .iter()
            .map(|item| {
                let folder = item.as_str().context(
                    "pyproject.toml: tool.eventhost.python-path: expected a list of folder names",
                )?;
                let path = dir.join(folder);
                ensure!(
                    path.is_dir(),
                    "pyproject.toml: tool.eventhost.python-path: {folder} is not a folder \
                     (relative to {})",
                    dir.display()
                );
                Ok(path)
            })
            .collect::<anyhow::Result<_>>()?,
        Some(_) => {
            bail!("pyproject.toml: tool.eventhost.python-path: expected a list of folder names")
        }
    };
    Ok(PyProject { name, python_path })
}

fn build_python(dir: &Path) -> anyhow::Result<PathBuf> {
    let source = python_app(dir)?;
    let wit = wit_dir(dir)?;
    let version = http_wit::eventhost_version(&wit)?;
    let project = py_project(dir)?;
    let tool = tools::componentize_py()?;
    // The project's `subscriber` world plus `wasi:http`'s outgoing handler,
    // whose WIT is written beside the project's for this build only.
    let outbound = tempfile::tempdir().context("creating a folder for the wasi:http WIT")?;
    http_wit::write(outbound.path(), &version)?;
    build_into(dir, &stem(project.name.as_deref(), dir), |out| {
        let mut command = Command::new(&tool);
        command
            .arg("-q")
            .arg("-d")
            .arg(&wit)
            .arg("-d")
            .arg(outbound.path())
            .args(["-w", http_wit::WORLD])
            .arg("--import-interface-name")
            .arg(format!("eventhost:plugin/types@{version}=types"))
            .args(["componentize", "-p"])
            .arg(&source);
        for path in &project.python_path {
            command.arg("-p").arg(path);
        }
        tools::run(
            command
                .arg("-o")
                .arg(out)
                .arg("app")
                .current_dir(dir)
                // Else componentize-py bundles the active venv's packages.
                .env_remove("VIRTUAL_ENV")
                .env_remove("PYTHONPATH"),
            "componentize-py",
        )
    })
}

/// What `package.json` says about the build: the name, the entry module
/// (`main`, default `app.js`), and `eventhost.root`, a folder above the
/// project (relative to it) that the build may read modules from: the
/// component's module loader sees only that folder, so imports that leave
/// the project (`../shared/lib.js`, a linked SDK) need it. Default: the
/// project itself.
#[derive(Debug, PartialEq)]
struct Package {
    name: Option<String>,
    entry: String,
    root: PathBuf,
}

fn package(dir: &Path) -> anyhow::Result<Package> {
    let text = fs::read_to_string(dir.join("package.json")).context("reading package.json")?;
    let package: serde_json::Value = serde_json::from_str(&text).context("parsing package.json")?;
    let entry = package["main"].as_str().unwrap_or("app.js").to_owned();
    ensure!(
        dir.join(&entry).is_file(),
        "{} has no {entry} (package.json `main`)",
        dir.display()
    );
    let root = match &package["eventhost"]["root"] {
        serde_json::Value::Null => dir.to_owned(),
        serde_json::Value::String(root) => {
            let path = dir.join(root).canonicalize().with_context(|| {
                format!(
                    "package.json: eventhost.root: {root} is not a folder (relative to {})",
                    dir.display()
                )
            })?;
            ensure!(
                dir.starts_with(&path),
                "package.json: eventhost.root: {root} is not a folder that contains the project"
            );
            path
        }
        _ => bail!("package.json: eventhost.root: expected a folder name"),
    };
    Ok(Package {
        name: package["name"].as_str().map(str::to_owned),
        entry,
        root,
    })
}

fn build_js(dir: &Path) -> anyhow::Result<PathBuf> {
    let package = package(dir)?;
    let wit = wit_dir(dir)?;
    let node = tools::node()?;
    let cli = tools::componentize_js()?;
    build_into(dir, &stem(package.name.as_deref(), dir), |out| {
        tools::run(
            Command::new(node)
                .arg(&cli)
                // componentize-js maps the working folder as the module
                // loader's root when the entry is inside it.
                .arg(dir.join(&package.entry))
                .arg("--wit")
                .arg(&wit)
                .args(["--world-name", "subscriber"])
                // `fetch` stays in: it calls the wasi:http the host links,
                // for 14 KB of component and no measurable start-up (see
                // docs/plugins.md). `fetch-event` is the incoming-handler
                // world, which a subscriber never exports.
                .args(["--disable", "fetch-event"])
                .arg("-o")
                .arg(out)
                .current_dir(&package.root),
            "componentize-js",
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn project(files: &[&str]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for file in files {
            let path = dir.path().join(file);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, "").unwrap();
        }
        dir
    }

    #[test]
    fn detects_the_language_from_the_toolchain_files() {
        let cases: &[(&[&str], Lang)] = &[
            (&["Cargo.toml", "src/lib.rs"], Lang::Rust),
            (&["Cargo.toml", "package.json"], Lang::Rust),
            (&["pyproject.toml"], Lang::Python),
            (&["src/app.py"], Lang::Python),
            (&["app.py"], Lang::Python),
            (&["package.json", "app.js"], Lang::Js),
        ];
        for (files, lang) in cases {
            assert_eq!(
                detect_lang(project(files).path()).unwrap(),
                *lang,
                "{files:?}"
            );
        }
        let err = detect_lang(project(&["README.md"]).path())
            .unwrap_err()
            .to_string();
        assert!(err.contains("is not a plugin project"), "{err}");
        assert!(detect_lang(Path::new("/no/such/folder")).is_err());
    }

    #[test]
    fn detects_the_generated_projects() {
        let dir = tempfile::tempdir().unwrap();
        for lang in Lang::ALL {
            let project = super::super::new_project(dir.path(), lang.as_str(), lang, &[]).unwrap();
            assert_eq!(detect_lang(&project).unwrap(), lang);
        }
    }

    #[test]
    fn finds_the_packages_cdylib_among_cargo_messages() {
        let dir = tempfile::tempdir().unwrap();
        let manifest = dir.path().join("Cargo.toml");
        fs::write(&manifest, "").unwrap();
        let m = manifest.display().to_string();
        let messages = [
            r#"{"reason":"compiler-artifact","manifest_path":"/reg/serde/Cargo.toml","target":{"kind":["lib"]},"filenames":["/t/libserde.rlib"]}"#.to_owned(),
            r#"{"reason":"compiler-artifact","manifest_path":"/v/sdk/Cargo.toml","target":{"kind":["cdylib"]},"filenames":["/t/other.wasm"]}"#.to_owned(),
            "not json".to_owned(),
            format!(r#"{{"reason":"compiler-artifact","manifest_path":"{m}","target":{{"kind":["cdylib"]}},"filenames":["/t/release/demo.wasm"]}}"#),
            r#"{"reason":"build-finished","success":true}"#.to_owned(),
        ]
        .join("\n");
        assert_eq!(
            cargo_component(&messages, &manifest),
            Some(PathBuf::from("/t/release/demo.wasm"))
        );
        assert_eq!(cargo_component(&messages[..0], &manifest), None);
        let lib_only = format!(
            r#"{{"reason":"compiler-artifact","manifest_path":"{m}","target":{{"kind":["lib"]}},"filenames":["/t/libdemo.rlib"]}}"#
        );
        assert_eq!(cargo_component(&lib_only, &manifest), None);
    }

    #[test]
    fn component_names_come_from_the_manifest_else_the_folder() {
        assert_eq!(stem(Some("order-audit"), Path::new("/x/y")), "order_audit");
        assert_eq!(
            stem(Some("@acme/order.audit"), Path::new("/x/y")),
            "order_audit"
        );
        assert_eq!(stem(None, Path::new("/x/my-plugin")), "my_plugin");
        assert_eq!(stem(Some(""), Path::new("/")), "plugin");
    }

    #[test]
    fn python_sources_are_src_else_the_top_folder() {
        let both = project(&["src/app.py", "app.py"]);
        assert_eq!(python_app(both.path()).unwrap(), both.path().join("src"));
        let top = project(&["app.py"]);
        assert_eq!(python_app(top.path()).unwrap(), top.path());
        assert!(python_app(project(&["pyproject.toml"]).path()).is_err());
    }

    #[test]
    fn pyproject_gives_the_name_and_extra_python_paths() {
        let dir = project(&["lib/shared.py"]);
        let write = |text: &str| fs::write(dir.path().join("pyproject.toml"), text).unwrap();
        assert_eq!(py_project(dir.path()).unwrap(), PyProject::default());
        write("[project]\nname = \"demo\"\n[tool.eventhost]\npython-path = [\"lib\"]\n");
        assert_eq!(
            py_project(dir.path()).unwrap(),
            PyProject {
                name: Some("demo".into()),
                python_path: vec![dir.path().join("lib")],
            }
        );
        write("[tool.eventhost]\npython-path = [\"missing\"]\n");
        let err = py_project(dir.path()).unwrap_err().to_string();
        assert!(err.contains("missing is not a folder"), "{err}");
        write("[tool.eventhost]\npython-path = \"lib\"\n");
        let err = py_project(dir.path()).unwrap_err().to_string();
        assert!(err.contains("expected a list"), "{err}");
    }

    #[test]
    fn package_json_gives_the_entry_and_the_module_root() {
        let top = project(&["plugin/app.js", "plugin/main.js"]);
        let dir = top.path().join("plugin").canonicalize().unwrap();
        let write = |text: &str| fs::write(dir.join("package.json"), text).unwrap();
        write(r#"{"name": "demo"}"#);
        assert_eq!(
            package(&dir).unwrap(),
            Package {
                name: Some("demo".into()),
                entry: "app.js".into(),
                root: dir.clone(),
            }
        );
        write(r#"{"main": "main.js", "eventhost": {"root": ".."}}"#);
        let found = package(&dir).unwrap();
        assert_eq!((found.entry.as_str(), found.name), ("main.js", None));
        assert_eq!(found.root, top.path().canonicalize().unwrap());
        write(r#"{"eventhost": {"root": "elsewhere"}}"#);
        assert!(package(&dir)
            .unwrap_err()
            .to_string()
            .contains("is not a folder"));
        fs::create_dir(dir.join("inner")).unwrap();
        write(r#"{"eventhost": {"root": "inner"}}"#);
        let err = package(&dir).unwrap_err().to_string();
        assert!(err.contains("contains the project"), "{err}");
        write(r#"{"main": "nope.js"}"#);
        assert!(package(&dir)
            .unwrap_err()
            .to_string()
            .contains("has no nope.js"));
    }

    #[test]
    fn a_failed_build_leaves_no_component() {
        let dir = tempfile::tempdir().unwrap();
        let err = build_into(dir.path(), "demo", |out| {
            fs::write(out, "half").unwrap();
            bail!("tool failed")
        });
        assert!(err.is_err());
        assert_eq!(fs::read_dir(dir.path().join("build")).unwrap().count(), 0);
        let ok = build_into(dir.path(), "demo", |out| Ok(fs::write(out, "wasm")?)).unwrap();
        assert_eq!(ok, dir.path().join("build/demo.wasm"));
        assert_eq!(fs::read_to_string(ok).unwrap(), "wasm");
    }
}
