//! The pinned build tools `eventhost build` installs by itself, into a
//! cache shared by every project: componentize-py in a Python venv,
//! componentize-js in an npm folder. What it cannot install (Python, Node,
//! cargo) is an error that says what to install.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context as _};

use super::templates::{JS_TOOL_LOCK, JS_TOOL_PACKAGE};
use super::{COMPONENTIZE_JS_VERSION, COMPONENTIZE_PY_VERSION};

/// A file written last into a tool folder: its absence means the install
/// did not finish (interrupted, failed), so the folder is rebuilt.
const COMPLETE: &str = ".eventhost-complete";

/// eventhost's cache folder: `$EVENTHOST_CACHE_DIR`, else
/// `$XDG_CACHE_HOME/eventhost`, else `~/.cache/eventhost`.
pub(crate) fn cache_dir() -> anyhow::Result<PathBuf> {
    let non_empty = |key: &str| {
        std::env::var_os(key)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    if let Some(dir) = non_empty("EVENTHOST_CACHE_DIR") {
        return Ok(dir);
    }
    if let Some(dir) = non_empty("XDG_CACHE_HOME") {
        return Ok(dir.join("eventhost"));
    }
    match non_empty("HOME").or_else(|| non_empty("USERPROFILE")) {
        Some(home) => Ok(home.join(".cache").join("eventhost")),
        None => bail!("no cache folder for the build tools: set EVENTHOST_CACHE_DIR (or HOME)"),
    }
}

/// Runs `program --version`-like `args` quietly: its trimmed stdout, or
/// None when the program is missing or fails.
pub(crate) fn probe(
    program: impl AsRef<std::ffi::OsStr>,
    args: &[&str],
    cwd: Option<&Path>,
) -> Option<String> {
    let mut command = Command::new(program);
    command
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::null());
    if let Some(cwd) = cwd {
        command.current_dir(cwd);
    }
    let out = command.output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Runs `command` to completion, its output on our stderr (stdout stays
/// for the component's path), and fails with `what` if it fails.
pub(crate) fn run(command: &mut Command, what: &str) -> anyhow::Result<()> {
    let status = command
        .stdin(Stdio::null())
        .stdout(std::io::stderr())
        .stderr(std::io::stderr())
        .status()
        .with_context(|| format!("{what}: cannot start {:?}", command.get_program()))?;
    if !status.success() {
        bail!("{what} failed ({status})");
    }
    Ok(())
}

fn bin(venv: &Path, program: &str) -> PathBuf {
    if cfg!(windows) {
        venv.join("Scripts").join(format!("{program}.exe"))
    } else {
        venv.join("bin").join(program)
    }
}

/// The program that runs Python 3 here, or an error saying to install it.
pub(crate) fn python3() -> anyhow::Result<&'static str> {
    for candidate in ["python3", "python"] {
        if probe(candidate, &["--version"], None).is_some_and(|v| v.starts_with("Python 3.")) {
            return Ok(candidate);
        }
    }
    bail!(
        "Python 3 is not installed (no `python3` on PATH): install Python 3.10 or newer with its \
         venv module (Debian/Ubuntu: `apt-get install python3 python3-venv`; macOS: `brew install \
         python`), then run `eventhost build` again"
    )
}

/// componentize-py at [`COMPONENTIZE_PY_VERSION`], installed on first use
/// with pip into `<cache>/tools/componentize-py-<version>` (a venv).
pub(crate) fn componentize_py() -> anyhow::Result<PathBuf> {
    let venv = cache_dir()?
        .join("tools")
        .join(format!("componentize-py-{COMPONENTIZE_PY_VERSION}"));
    let tool = bin(&venv, "componentize-py");
    let wanted = format!("componentize-py {COMPONENTIZE_PY_VERSION}");
    if venv.join(COMPLETE).is_file()
        && probe(&tool, &["--version"], None).as_deref() == Some(&wanted)
    {
        return Ok(tool);
    }
    let python = python3()?;
    eprintln!(
        "installing componentize-py {COMPONENTIZE_PY_VERSION} into {} (once)",
        venv.display()
    );
    if venv.exists() {
        fs::remove_dir_all(&venv)
            .with_context(|| format!("removing the unfinished {}", venv.display()))?;
    }
    fs::create_dir_all(venv.parent().expect("a tools folder"))
        .with_context(|| format!("creating {}", venv.display()))?;
    run(
        Command::new(python).arg("-m").arg("venv").arg(&venv),
        "creating a Python venv",
    )
    .context(
        "`python3 -m venv` failed: install Python's venv module (Debian/Ubuntu: `apt-get install \
         python3-venv`)",
    )?;
    run(
        Command::new(bin(&venv, "python"))
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
            ])
            .arg(format!("componentize-py=={COMPONENTIZE_PY_VERSION}")),
        &format!("pip install componentize-py=={COMPONENTIZE_PY_VERSION}"),
    )
    .context("installing componentize-py from PyPI (needs the network once)")?;
    match probe(&tool, &["--version"], None) {
        Some(version) if version == wanted => {}
        other => bail!("{} reports {other:?}, expected {wanted:?}", tool.display()),
    }
    fs::write(venv.join(COMPLETE), "").with_context(|| format!("writing {}", venv.display()))?;
    Ok(tool)
}

fn npm() -> &'static str {
    if cfg!(windows) {
        "npm.cmd"
    } else {
        "npm"
    }
}

/// `node`, or an error saying to install Node.js.
pub(crate) fn node() -> anyhow::Result<&'static str> {
    match probe("node", &["--version"], None) {
        Some(_) => Ok("node"),
        None => bail!(
            "Node.js is not installed (no `node` on PATH): install Node.js 20 or newer with npm \
             (https://nodejs.org; Debian/Ubuntu: `apt-get install nodejs npm`), then run \
             `eventhost build` again"
        ),
    }
}

/// componentize-js's command line script (run with `node`) at
/// [`COMPONENTIZE_JS_VERSION`], installed on first use with npm into
/// `<cache>/tools/componentize-js-<version>` from the embedded lock file.
pub(crate) fn componentize_js() -> anyhow::Result<PathBuf> {
    let dir = cache_dir()?
        .join("tools")
        .join(format!("componentize-js-{COMPONENTIZE_JS_VERSION}"));
    let package = dir.join("node_modules/@bytecodealliance/componentize-js");
    let cli = package.join("src/cli.js");
    let installed = || -> Option<String> {
        let text = fs::read_to_string(package.join("package.json")).ok()?;
        let json: serde_json::Value = serde_json::from_str(&text).ok()?;
        json["version"].as_str().map(str::to_owned)
    };
    if dir.join(COMPLETE).is_file()
        && cli.is_file()
        && installed().as_deref() == Some(COMPONENTIZE_JS_VERSION)
    {
        return Ok(cli);
    }
    node()?;
    if probe(npm(), &["--version"], None).is_none() {
        bail!(
            "npm is not installed (no `npm` on PATH): install npm (it comes with Node.js; \
             Debian/Ubuntu: `apt-get install npm`), then run `eventhost build` again"
        );
    }
    eprintln!(
        "installing componentize-js {COMPONENTIZE_JS_VERSION} into {} (once)",
        dir.display()
    );
    if dir.exists() {
        fs::remove_dir_all(&dir)
            .with_context(|| format!("removing the unfinished {}", dir.display()))?;
    }
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    fs::write(dir.join("package.json"), JS_TOOL_PACKAGE)
        .context("writing the tool's package.json")?;
    fs::write(dir.join("package-lock.json"), JS_TOOL_LOCK)
        .context("writing the tool's package-lock.json")?;
    // Not `npm ci`: npm 11 refuses this lock file (optional packages of other
    // platforms); `install --no-save` follows the lock and never rewrites it.
    run(
        Command::new(npm())
            .args([
                "install",
                "--no-save",
                "--no-audit",
                "--no-fund",
                "--loglevel=error",
            ])
            .current_dir(&dir),
        &format!("npm install componentize-js {COMPONENTIZE_JS_VERSION}"),
    )
    .context("installing componentize-js from npm (needs the network once)")?;
    match installed() {
        Some(version) if version == COMPONENTIZE_JS_VERSION => {}
        other => {
            bail!("npm installed componentize-js {other:?}, expected {COMPONENTIZE_JS_VERSION}")
        }
    }
    fs::write(dir.join(COMPLETE), "").with_context(|| format!("writing {}", dir.display()))?;
    Ok(cli)
}

/// `cargo`, or an error saying to install Rust.
pub(crate) fn cargo(project: &Path) -> anyhow::Result<&'static str> {
    match probe("cargo", &["--version"], Some(project)) {
        Some(_) => Ok("cargo"),
        None => bail!(
            "cargo is not installed (no `cargo` on PATH): install Rust with rustup \
             (https://rustup.rs), then run `eventhost build` again"
        ),
    }
}

/// Makes sure the toolchain that builds `project` has the `wasm32-wasip2`
/// standard library, adding it with rustup when it is missing.
pub(crate) fn wasm32_wasip2(project: &Path) -> anyhow::Result<()> {
    const TARGET: &str = "wasm32-wasip2";
    let has_target = || {
        probe(
            "rustc",
            &["--print", "target-libdir", "--target", TARGET],
            Some(project),
        )
        .is_some_and(|dir| Path::new(&dir).is_dir())
    };
    if has_target() {
        return Ok(());
    }
    if probe("rustup", &["--version"], Some(project)).is_none() {
        bail!(
            "the Rust standard library for {TARGET} is not installed, and there is no rustup to \
             add it: install it for your toolchain (with rustup: `rustup target add {TARGET}`)"
        );
    }
    eprintln!("adding the {TARGET} target with rustup (once)");
    run(
        Command::new("rustup")
            .args(["target", "add", TARGET])
            .current_dir(project),
        &format!("rustup target add {TARGET}"),
    )?;
    if !has_target() {
        bail!("`rustup target add {TARGET}` succeeded but rustc still has no {TARGET} library");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_python_probe_pins_the_same_componentize_py() {
        let script = include_str!("../../../plugins/python-probe/build.sh");
        assert!(
            script.contains(&format!("version=\"{COMPONENTIZE_PY_VERSION}\"")),
            "plugins/python-probe/build.sh pins another componentize-py"
        );
    }

    #[test]
    fn probe_reports_missing_and_failing_programs_as_none() {
        assert_eq!(probe("eventhost-no-such-program", &[], None), None);
        assert_eq!(probe("sh", &["-c", "exit 3"], None), None);
        assert_eq!(
            probe("sh", &["-c", "echo ' hi '"], None).as_deref(),
            Some("hi")
        );
    }
}
