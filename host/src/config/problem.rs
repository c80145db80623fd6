//! Problems found in a config file, each located at its file, line and key.
//!
//! Keeping the position with every problem is what lets a user fix a config
//! in one go: all problems are reported at once, sorted as they appear in the
//! file, each as `file:line:column: key: what is wrong`.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use toml::de::{DeTable, DeValue};

/// One thing wrong in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
    /// Dotted key path, e.g. `subscribers.payment.concurrency`.
    pub key: String,
    pub message: String,
}

impl Problem {
    /// A problem with `key`, at `span` of `text` (line 1 if unknown).
    pub fn at_span(
        file: &Path,
        text: &str,
        span: Option<Range<usize>>,
        key: &str,
        message: impl Into<String>,
    ) -> Self {
        let (line, column) = span.map_or((1, 1), |span| line_and_column(text, span.start));
        Problem {
            file: file.to_path_buf(),
            line,
            column,
            key: key.to_string(),
            message: message.into(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}: {}",
            self.file.display(),
            self.line,
            self.column,
            if self.key.is_empty() {
                "(top level)"
            } else {
                &self.key
            },
            self.message
        )
    }
}

/// Every problem found in a config file, one per line when displayed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub problems: Vec<Problem>,
}

impl ConfigError {
    /// The problems, in the order they appear in the file.
    pub fn new(mut problems: Vec<Problem>) -> Self {
        problems.sort_by_key(|p| (p.line, p.column));
        ConfigError { problems }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, problem) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{problem}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// Where the value of the key at `path` (e.g. `["subscribers", "a.b",
/// "plugin"]`: a name may hold dots) starts in `text`, or the key itself for
/// a table; `None` if the text does not hold it.
pub fn span_of(text: &str, path: &[&str]) -> Option<Range<usize>> {
    let root = DeTable::parse(text).ok()?;
    let mut table = root.get_ref();
    let mut span = None;
    for (i, segment) in path.iter().enumerate() {
        let (key, value) = table.get_key_value(*segment)?;
        span = Some(match value.get_ref() {
            DeValue::Table(_) => key.span(),
            _ => value.span(),
        });
        match value.get_ref() {
            DeValue::Table(inner) => table = inner,
            _ if i + 1 < path.len() => return None,
            _ => {}
        }
    }
    span
}

/// 1-based line and column of byte `offset` in `text`.
pub fn line_and_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..text.floor_char_boundary(offset.min(text.len()))];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_found_by_path_even_when_names_hold_dots() {
        let text = "[redis]\nurl = \"x\"\n\n[subscribers.\"a.b\"]\nplugin = \"p.wasm\"\n";
        let at = |path: &[&str]| span_of(text, path).map(|s| line_and_column(text, s.start));
        assert_eq!(at(&["redis", "url"]), Some((2, 7)));
        assert_eq!(at(&["subscribers", "a.b", "plugin"]), Some((5, 10)));
        assert_eq!(at(&["subscribers", "a.b"]), Some((4, 14)));
        assert_eq!(at(&["subscribers", "c"]), None);
        assert_eq!(at(&["redis", "url", "deeper"]), None);
    }

    #[test]
    fn problems_are_listed_in_file_order() {
        let p = |line, key: &str| Problem {
            file: "f.toml".into(),
            line,
            column: 1,
            key: key.into(),
            message: "m".into(),
        };
        let err = ConfigError::new(vec![p(7, "b"), p(2, "a")]);
        assert_eq!(err.to_string(), "f.toml:2:1: a: m\nf.toml:7:1: b: m");
    }
}
