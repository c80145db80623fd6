//! The pinned build tools `eventhost build` installs by itself, into a
//! cache shared by every project: componentize-py in a Python venv,
//! componentize-js in an npm folder. What it cannot install (Python, Node,
//! cargo) is an error that says what to install.
//!
//! What is installed is what was pinned: componentize-py's wheels by their
//! sha256 (`pip --require-hashes`), componentize-js's whole tree by the
//! sha512 integrity of each package in the embedded lock file (npm checks
//! them). And since `build` runs these tools, their folders must be ours
//! and writable by no one else, as the compiled cache's are
//! ([`crate::ownership`]): a tool another user could have replaced is
//! refused, never run. Installs run with umask 077, so what they write is
//! private from the start.

use std::fs;
use std::os::unix::fs::DirBuilderExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context as _};

use super::templates::{JS_TOOL_LOCK, JS_TOOL_PACKAGE};
use super::{COMPONENTIZE_JS_VERSION, COMPONENTIZE_PY_VERSION};
use crate::private_redis::write_private_file;

/// A file written last into a tool folder: its absence means the install
/// did not finish (interrupted, failed), so the folder is rebuilt.
const COMPLETE: &str = ".eventhost-complete";

/// componentize-py at [`COMPONENTIZE_PY_VERSION`] and the sha256 of each of
/// its wheels on PyPI (Linux x86_64 and aarch64, macOS x86_64 and arm64,
/// Windows), for `pip install --require-hashes`: pip refuses any other
/// file. It has no dependencies. The python probe's build installs from the
/// same file.
const PY_TOOL_REQUIREMENTS: &str = include_str!("../../../plugins/python-probe/requirements.txt");

/// Why a tool folder is not used: someone else may have written it.
#[derive(Debug, thiserror::Error)]
#[error(
    "{path}: {reason}, so another user could have replaced the build tools in {tools}; \
     eventhost will not run them. Remove them (`rm -rf {tools}`; they are installed again), make \
     sure {cache} is yours and writable by you alone (`chown $USER {cache} && chmod go-w \
     {cache}`), then run `eventhost build` again"
)]
pub(crate) struct UntrustedTools {
    path: String,
    tools: String,
    cache: String,
    reason: crate::ownership::Untrusted,
}

/// The folder `name` in `<cache>/tools`, its parents made (0700) if
/// missing, after checking that the cache folder, the tools folder and
/// everything in the tool's folder (if it exists) is ours and writable by
/// no one else. Symlinks inside (a venv's `bin/python`) are not followed:
/// one can only be replaced through its folder, which is checked.
fn tool_dir(name: &str) -> anyhow::Result<PathBuf> {
    let cache = cache_dir()?;
    let tools = cache.join("tools");
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&tools)
        .with_context(|| format!("creating {}", tools.display()))?;
    let dir = tools.join(name);
    check_trusted(&cache, &dir)?;
    Ok(dir)
}

/// Checks `cache` and its `tools` folder (followed if symlinks: the cache
/// may live elsewhere) and every entry under `tree`, if it exists.
fn check_trusted(cache: &Path, tree: &Path) -> anyhow::Result<()> {
    let tools = cache.join("tools");
    let refuse = |path: &Path, reason| UntrustedTools {
        path: path.display().to_string(),
        tools: tools.display().to_string(),
        cache: cache.display().to_string(),
        reason,
    };
    for folder in [cache, &tools] {
        let meta = fs::metadata(folder).with_context(|| format!("reading {}", folder.display()))?;
        crate::ownership::check(&meta).map_err(|reason| refuse(folder, reason))?;
    }
    if fs::symlink_metadata(tree).is_err() {
        return Ok(());
    }
    let mut stack = vec![tree.to_path_buf()];
    while let Some(path) = stack.pop() {
        let meta =
            fs::symlink_metadata(&path).with_context(|| format!("reading {}", path.display()))?;
        if meta.file_type().is_symlink() {
            continue;
        }
        crate::ownership::check(&meta).map_err(|reason| refuse(&path, reason))?;
        if meta.is_dir() {
            for entry in
                fs::read_dir(&path).with_context(|| format!("reading {}", path.display()))?
            {
                stack.push(entry?.path());
            }
        }
    }
    Ok(())
}

/// Makes `command` write its files readable and writable by us only
/// (umask 077), so an installed tool passes [`tool_dir`]'s check whatever
/// the user's umask.
fn private_umask(command: &mut Command) -> &mut Command {
    // SAFETY: umask is async-signal-safe and cannot fail.
    unsafe {
        command.pre_exec(|| {
            libc::umask(0o077);
            Ok(())
        })
    }
}

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
    let venv = tool_dir(&format!("componentize-py-{COMPONENTIZE_PY_VERSION}"))?;
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
    run(
        private_umask(Command::new(python).arg("-m").arg("venv").arg(&venv)),
        "creating a Python venv",
    )
    .context(
        "`python3 -m venv` failed: install Python's venv module (Debian/Ubuntu: `apt-get install \
         python3-venv`)",
    )?;
    let requirements = venv.join("eventhost-requirements.txt");
    write_private_file(&requirements, PY_TOOL_REQUIREMENTS)?;
    run(
        private_umask(
            Command::new(bin(&venv, "python"))
                .args([
                    "-m",
                    "pip",
                    "install",
                    "--quiet",
                    "--disable-pip-version-check",
                    "--require-hashes",
                    "--only-binary=:all:",
                    "--no-deps",
                    "-r",
                ])
                .arg(&requirements),
        ),
        &format!("pip install componentize-py=={COMPONENTIZE_PY_VERSION}"),
    )
    .context("installing componentize-py from PyPI (needs the network once)")?;
    match probe(&tool, &["--version"], None) {
        Some(version) if version == wanted => {}
        other => bail!("{} reports {other:?}, expected {wanted:?}", tool.display()),
    }
    write_private_file(&venv.join(COMPLETE), "")?;
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
    let dir = tool_dir(&format!("componentize-js-{COMPONENTIZE_JS_VERSION}"))?;
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
    fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .with_context(|| format!("creating {}", dir.display()))?;
    write_private_file(&dir.join("package.json"), JS_TOOL_PACKAGE)?;
    write_private_file(&dir.join("package-lock.json"), JS_TOOL_LOCK)?;
    // Not `npm ci`: npm 11 refuses this lock file (optional packages of other
    // platforms); `install --no-save` follows the lock and never rewrites it,
    // and checks each package against the lock's sha512 integrity.
    run(
        private_umask(
            Command::new(npm())
                .args([
                    "install",
                    "--no-save",
                    "--no-audit",
                    "--no-fund",
                    "--loglevel=error",
                ])
                .current_dir(&dir),
        ),
        &format!("npm install componentize-js {COMPONENTIZE_JS_VERSION}"),
    )
    .context("installing componentize-js from npm (needs the network once)")?;
    match installed() {
        Some(version) if version == COMPONENTIZE_JS_VERSION => {}
        other => {
            bail!("npm installed componentize-js {other:?}, expected {COMPONENTIZE_JS_VERSION}")
        }
    }
    write_private_file(&dir.join(COMPLETE), "")?;
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
    fn componentize_py_is_pinned_by_the_hash_of_each_wheel() {
        let lines: Vec<&str> = PY_TOOL_REQUIREMENTS
            .lines()
            .map(str::trim)
            .filter(|l| !l.starts_with('#'))
            .collect();
        assert_eq!(
            lines[0],
            format!("componentize-py=={COMPONENTIZE_PY_VERSION} \\")
        );
        let hashes: Vec<&str> = lines[1..]
            .iter()
            .map(|l| {
                l.trim_end_matches(" \\")
                    .strip_prefix("--hash=sha256:")
                    .unwrap_or_else(|| panic!("not a hash line: {l}"))
            })
            .collect();
        assert_eq!(hashes.len(), 5, "one per wheel: {hashes:?}");
        for hash in &hashes {
            assert!(
                hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit()),
                "{hash}"
            );
        }
        // The Linux x86_64 wheel, as `sha256sum` printed it.
        assert!(
            hashes.contains(&"8623cd8cab8453cb0cd8bf03f3c7103420d06f2f3d360186a280a70a1ca5e89f")
        );
    }

    #[test]
    fn componentize_js_is_pinned_by_the_integrity_of_every_package() {
        let lock: serde_json::Value = serde_json::from_str(JS_TOOL_LOCK).unwrap();
        let packages = lock["packages"].as_object().unwrap();
        let mut checked = 0;
        for (name, package) in packages.iter().filter(|(name, _)| !name.is_empty()) {
            let integrity = package["integrity"].as_str().unwrap_or_default();
            assert!(
                integrity.starts_with("sha512-") && integrity.len() > 80,
                "{name} has no sha512 integrity: {package}"
            );
            checked += 1;
        }
        assert!(checked > 100, "the whole tree: {checked}");
    }

    /// A tools tree: `<cache>/tools/t/{bin/tool, lib/x}` and a symlink out.
    fn tools_tree() -> (tempfile::TempDir, PathBuf, PathBuf) {
        use std::os::unix::fs::PermissionsExt as _;
        let root = tempfile::tempdir().unwrap();
        let cache = root.path().join("cache");
        let tool = cache.join("tools/t");
        fs::create_dir_all(tool.join("bin")).unwrap();
        fs::create_dir_all(tool.join("lib")).unwrap();
        fs::write(tool.join("bin/tool"), "#!/bin/sh\n").unwrap();
        fs::write(tool.join("lib/x"), "").unwrap();
        // Like a venv's bin/python: the target is not ours, the link is.
        std::os::unix::fs::symlink("/tmp", tool.join("bin/python")).unwrap();
        for dir in [
            &cache,
            &cache.join("tools"),
            &tool,
            &tool.join("bin"),
            &tool.join("lib"),
        ] {
            fs::set_permissions(dir, fs::Permissions::from_mode(0o755)).unwrap();
        }
        for file in [tool.join("bin/tool"), tool.join("lib/x")] {
            fs::set_permissions(file, fs::Permissions::from_mode(0o644)).unwrap();
        }
        (root, cache, tool)
    }

    #[test]
    fn a_tools_tree_of_ours_that_only_we_write_is_used() {
        let (_root, cache, tool) = tools_tree();
        check_trusted(&cache, &tool).unwrap();
        // A tool not installed yet: only the folders above it.
        check_trusted(&cache, &cache.join("tools/none")).unwrap();
    }

    #[test]
    fn a_tools_tree_others_may_write_anywhere_is_refused_saying_what_to_do() {
        use std::os::unix::fs::PermissionsExt as _;
        for (what, mode) in [
            ("", 0o777),
            ("tools", 0o777),
            ("tools/t", 0o775),
            ("tools/t/lib", 0o757),
            ("tools/t/bin/tool", 0o666),
            ("tools/t/lib/x", 0o646),
        ] {
            let (_root, cache, tool) = tools_tree();
            let path = cache.join(what);
            fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
            let err = check_trusted(&cache, &tool).expect_err(what).to_string();
            let path = path.display().to_string();
            let path = path.trim_end_matches('/');
            assert!(
                err.starts_with(&format!("{path}: others may write it (mode {mode:o})")),
                "{what}: {err}"
            );
            assert!(
                err.contains(&format!("rm -rf {}", cache.join("tools").display())),
                "says what to do: {err}"
            );
        }
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
