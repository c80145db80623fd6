//! Plugin authoring: what `eventhost new` and `eventhost build` do.
//!
//! An author's loop is three commands in Rust, Python and JavaScript alike:
//! [`new_project`] writes a project from templates embedded in the binary,
//! [`build_project`] builds it into a component with the language's own
//! toolchain at pinned versions, and `eventhost invoke` runs it. Nothing
//! here touches Redis or wasmtime: this module only writes files and runs
//! build tools.
//!
//! A generated project builds anywhere, outside this repository too: it
//! carries its own copy of the WIT and of the SDK. Those copies are embedded
//! from the repository's single sources (`wit/`, `plugins/sdk`,
//! `plugins/sdk-python`, `plugins/sdk-js`) when the host is compiled, so they
//! cannot drift from what the host implements.

mod build;
mod http_wit;
mod new;
mod templates;
mod tools;

use std::fmt;
use std::str::FromStr;

pub use build::{build_project, detect_lang};
pub use new::{new_project, validate_event_type, validate_name};

/// The componentize-py version `build` installs and uses for Python
/// projects, pinned so that a project builds the same way everywhere (the
/// version `plugins/python-probe/build.sh` uses).
pub const COMPONENTIZE_PY_VERSION: &str = "0.25.1";

/// The componentize-js version `build` installs and uses for JavaScript
/// projects; the exact dependency tree is the lock file of
/// `plugins/js-probe`, embedded (a unit test checks they agree).
pub const COMPONENTIZE_JS_VERSION: &str = "0.23.0";

/// A language a plugin project can be written in: it picks the template for
/// `new` and the toolchain for `build`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum Lang {
    /// Rust, built by cargo for `wasm32-wasip2` with the Rust SDK.
    Rust,
    /// Python, built by componentize-py with the Python SDK.
    #[value(alias = "py")]
    Python,
    /// JavaScript (ES modules), built by componentize-js with the JS SDK.
    #[value(alias = "javascript")]
    Js,
}

impl Lang {
    /// Every language, in the order `--help` and messages list them.
    pub const ALL: [Lang; 3] = [Lang::Rust, Lang::Python, Lang::Js];

    /// The name used on the command line (`--lang`) and in messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Lang::Rust => "rust",
            Lang::Python => "python",
            Lang::Js => "js",
        }
    }
}

impl fmt::Display for Lang {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Lang {
    type Err = anyhow::Error;

    /// Parses `rust`, `python`/`py` or `js`/`javascript`, so a library user
    /// gets the same names as the command line.
    fn from_str(s: &str) -> anyhow::Result<Lang> {
        match s.trim().to_ascii_lowercase().as_str() {
            "rust" | "rs" => Ok(Lang::Rust),
            "python" | "py" => Ok(Lang::Python),
            "js" | "javascript" => Ok(Lang::Js),
            other => anyhow::bail!("unknown language `{other}`: expected rust, python or js"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn languages_parse_by_name_and_alias() {
        for lang in Lang::ALL {
            assert_eq!(lang.as_str().parse::<Lang>().unwrap(), lang);
            assert_eq!(lang.to_string(), lang.as_str());
        }
        assert_eq!("PY".parse::<Lang>().unwrap(), Lang::Python);
        assert_eq!("javascript".parse::<Lang>().unwrap(), Lang::Js);
        let err = "go".parse::<Lang>().unwrap_err().to_string();
        assert!(err.contains("rust, python or js"), "{err}");
    }
}
