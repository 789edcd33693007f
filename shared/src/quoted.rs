//! [`Quoted`]: text in an error message, quoted and escaped as `{:?}` would, for ASCII.

use std::fmt::{self, Write};

/// Shows `self.0` in double quotes with `"`, `\` and control characters escaped, as `{:?}`
/// does for ASCII text. Unlike `{:?}` it leaves other non-ASCII characters as they are,
/// which keeps Unicode's printable-character tables out of the browser package (the client
/// shows these messages too; docs/BENCHMARKS.md, "Package size").
#[derive(Debug, Clone, Copy)]
pub struct Quoted<'a>(pub &'a str);

impl fmt::Display for Quoted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_char('"')?;
        for c in self.0.chars() {
            match c {
                '"' => f.write_str("\\\"")?,
                '\\' => f.write_str("\\\\")?,
                '\n' => f.write_str("\\n")?,
                '\r' => f.write_str("\\r")?,
                '\t' => f.write_str("\\t")?,
                '\0' => f.write_str("\\0")?,
                c if c.is_control() => write!(f, "\\u{{{:x}}}", u32::from(c))?,
                c => f.write_char(c)?,
            }
        }
        f.write_char('"')
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::Quoted;

    proptest! {
        #[test]
        fn ascii_is_quoted_as_debug_does(text in "[\\x00-\\x7f]{0,40}") {
            prop_assert_eq!(Quoted(&text).to_string(), format!("{text:?}"));
        }

        #[test]
        fn control_characters_never_appear_raw(text in "\\PC{0,20}[\\x00-\\x1f\\x7f-\\u{9f}]\\PC{0,20}") {
            let quoted = Quoted(&text).to_string();
            prop_assert!(!quoted.chars().any(char::is_control), "{quoted}");
        }
    }

    #[test]
    fn other_characters_stay_as_they_are() {
        assert_eq!(Quoted("café \u{200b}").to_string(), "\"café \u{200b}\"");
    }
}
