//! The WIT a Python build adds to the project's own: outbound HTTP through
//! `wasi:http/outgoing-handler`, which the host links (refusing what a
//! subscriber's grants do not name).
//!
//! componentize-py builds bindings for exactly the world it is given, so a
//! Python plugin can make requests only if its world imports `wasi:http`.
//! Rather than asking every project to carry the WASI WIT (and the
//! projects made before this, or linking the repository's `wit/`, to be
//! changed), `build` writes it into a temporary folder: a world that
//! includes the project's `subscriber` and imports the outgoing handler,
//! and the WASI WIT of the wasmtime-wasi-http the host is built with,
//! embedded from `host/wit/deps`.

use std::fs;
use std::path::Path;

use anyhow::{bail, Context as _};

/// The world a Python build targets: the project's `subscriber` and the
/// outgoing handler.
pub(crate) const WORLD: &str = "eventhost:outbound/subscriber";

/// The `wasi:http` version of `host/wit/deps`, which the host links.
const WASI_HTTP_VERSION: &str = "0.2.12";

/// WASI 0.2.12 from `host/wit/deps`: `wasi:http` and what it uses.
const DEPS: &[(&str, &str)] = &[
    ("http.wit", include_str!("../../wit/deps/http.wit")),
    ("io.wit", include_str!("../../wit/deps/io.wit")),
    ("clocks.wit", include_str!("../../wit/deps/clocks.wit")),
    ("random.wit", include_str!("../../wit/deps/random.wit")),
    ("cli.wit", include_str!("../../wit/deps/cli.wit")),
    (
        "filesystem.wit",
        include_str!("../../wit/deps/filesystem.wit"),
    ),
    ("sockets.wit", include_str!("../../wit/deps/sockets.wit")),
];

/// The world [`WORLD`] for a project whose WIT is `eventhost:plugin` at
/// `version`. It includes `subscriber` rather than being merged with it on
/// componentize-py's command line (`-w` twice), which componentize-py
/// 0.25.1 accepts for bindings but panics on when it builds a component.
fn world(version: &str) -> String {
    format!(
        "/// A subscriber that may send HTTP requests (written by `eventhost build`).\n\
         package eventhost:outbound;\n\n\
         world subscriber {{\n  \
         include eventhost:plugin/subscriber@{version};\n  \
         import wasi:http/outgoing-handler@{WASI_HTTP_VERSION};\n}}\n"
    )
}

/// Writes [`WORLD`] (for `eventhost:plugin` at `version`) and the WASI
/// it imports into `dir`, a fresh temporary folder, for componentize-py's
/// `-d` beside the project's own WIT folder.
pub(crate) fn write(dir: &Path, version: &str) -> anyhow::Result<()> {
    let world_file = dir.join("outbound.wit");
    fs::write(&world_file, world(version))
        .with_context(|| format!("writing {}", world_file.display()))?;
    let deps = dir.join("deps");
    fs::create_dir_all(&deps).with_context(|| format!("creating {}", deps.display()))?;
    for (name, text) in DEPS {
        let path = deps.join(name);
        fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// The version of `eventhost:plugin` the project's WIT folder declares
/// (`package eventhost:plugin@0.1.0;` in one of its `.wit` files).
///
/// With `wasi:http` merged in, two interfaces are called `types`, and
/// componentize-py would name both modules after their packages; the build
/// keeps `wit_world.imports.types` for eventhost's (what the SDK and
/// existing plugins import), which needs the interface's full name.
pub(crate) fn eventhost_version(wit: &Path) -> anyhow::Result<String> {
    let entries = fs::read_dir(wit).with_context(|| format!("reading {}", wit.display()))?;
    let mut files: Vec<_> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "wit"))
        .collect();
    files.sort();
    for file in files {
        let text =
            fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
        if let Some(version) = package_version(&text) {
            return Ok(version);
        }
    }
    bail!(
        "{} declares no `package eventhost:plugin@<version>;` (projects from `eventhost new` \
         carry wit/eventhost.wit)",
        wit.display()
    )
}

/// The version in a `package eventhost:plugin@<version>;` line of `text`.
fn package_version(text: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let rest = line.trim().strip_prefix("package")?.trim_start();
        let version = rest.strip_prefix("eventhost:plugin@")?;
        let version = version.trim_end().strip_suffix(';')?.trim();
        (!version.is_empty()).then(|| version.to_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_version_comes_from_the_package_line() {
        let wit = include_str!("../../../wit/eventhost.wit");
        let version = package_version(wit).expect("wit/eventhost.wit names its package");
        assert!(
            version.chars().next().unwrap().is_ascii_digit(),
            "{version}"
        );
        assert_eq!(
            package_version("// x\npackage eventhost:plugin@0.2.0 ;\n").as_deref(),
            Some("0.2.0")
        );
        assert_eq!(package_version("package other:plugin@1.0.0;"), None);
        assert_eq!(package_version("package eventhost:plugin;"), None);
    }

    #[test]
    fn the_staged_world_includes_the_subscriber_and_the_wasi_http_the_host_links() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "0.1.0").unwrap();
        let world = fs::read_to_string(dir.path().join("outbound.wit")).unwrap();
        assert!(world.contains("package eventhost:outbound;"), "{world}");
        assert!(world.contains("world subscriber {"), "{world}");
        assert!(
            world.contains("include eventhost:plugin/subscriber@0.1.0;"),
            "{world}"
        );
        assert!(
            world.contains("import wasi:http/outgoing-handler@0.2.12;"),
            "{world}"
        );
        // The version imported is the one the copied WIT declares.
        let http = fs::read_to_string(dir.path().join("deps/http.wit")).unwrap();
        assert!(
            http.starts_with(&format!("package wasi:http@{WASI_HTTP_VERSION};")),
            "{}",
            &http[..40]
        );
        let repo_wit = Path::new(env!("CARGO_MANIFEST_DIR")).join("../wit");
        assert_eq!(
            eventhost_version(&repo_wit).unwrap(),
            package_version(include_str!("../../../wit/eventhost.wit")).unwrap()
        );
        // Python and JavaScript projects carry the 0.2.0 contract.
        assert_eq!(eventhost_version(&repo_wit.join("v0.2")).unwrap(), "0.2.0");
        write(dir.path(), "0.2.0").unwrap();
        let world = fs::read_to_string(dir.path().join("outbound.wit")).unwrap();
        assert!(
            world.contains("include eventhost:plugin/subscriber@0.2.0;"),
            "{world}"
        );
    }
}
