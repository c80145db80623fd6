//! Text read from Redis, made fit for an operator's terminal: anyone who
//! can write to the bus can write a subscriber's name or a heartbeat, and
//! an escape sequence in it would drive the terminal (recolour it, move the
//! cursor over earlier lines, set its title, ring it), and a long one flood
//! it.

/// `text` with every character that is not plain text shown as a Rust
/// escape (`\u{1b}`): C0 controls, DEL, C1 controls, and the invisible
/// marks that reorder a line (bidirectional overrides).
pub fn escaped(text: &str) -> String {
    shown(text, usize::MAX)
}

/// The same, cut after `max` characters of output (an escape counted as
/// the characters it prints), with `…` to say so; never cut inside a
/// character or an escape.
pub fn shown(text: &str, max: usize) -> String {
    let mut out = String::with_capacity(text.len().min(max.saturating_mul(4)));
    let mut count = 0usize;
    for c in text.chars() {
        let piece: String = if hidden(c) {
            format!("\\u{{{:x}}}", c as u32)
        } else {
            c.to_string()
        };
        let width = piece.chars().count();
        if count + width > max {
            out.push('…');
            return out;
        }
        out.push_str(&piece);
        count += width;
    }
    out
}

/// The first `max` characters of `text` (not bytes: a cut inside a
/// character would panic), escaped.
pub fn first_chars(text: &str, max: usize) -> String {
    let cut: String = text.chars().take(max).collect();
    escaped(&cut)
}

/// Characters a terminal acts on or that hide or reorder text.
fn hidden(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{061c}'
                | '\u{200e}'
                | '\u{200f}'
                | '\u{202a}'..='\u{202e}'
                | '\u{2066}'..='\u{2069}'
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controls_are_shown_as_escapes() {
        assert_eq!(escaped("\x1b[31mEVIL\x07"), "\\u{1b}[31mEVIL\\u{7}");
        assert_eq!(
            escaped("a\x7fb\u{9b}c\n\r\t"),
            "a\\u{7f}b\\u{9b}c\\u{a}\\u{d}\\u{9}"
        );
        assert_eq!(escaped("pay\u{202e}gnp.exe"), "pay\\u{202e}gnp.exe");
        assert_eq!(escaped("payments-été-€"), "payments-été-€", "letters stay");
        assert!(!escaped("\x1b\x07\x7f\u{85}")
            .chars()
            .any(|c| c.is_control()));
    }

    #[test]
    fn cuts_are_by_characters_never_inside_one() {
        assert_eq!(shown("abcdef", 4), "abcd…");
        assert_eq!(shown("abcd", 4), "abcd");
        assert_eq!(shown("x€€€€€", 3), "x€€…");
        assert_eq!(shown("ab\x1bcd", 6), "ab…", "an escape is not cut");
        assert_eq!(first_chars("x€€€€€€€€€€€€", 12), "x€€€€€€€€€€€");
        assert_eq!(first_chars("é", 12), "é");
        assert_eq!(first_chars("\x1b\x1b", 1), "\\u{1b}");
    }
}
