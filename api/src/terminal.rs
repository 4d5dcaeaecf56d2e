//! Terminal-safe text: what a person or an agent wrote (a justification, a token name, an
//! agent's record) is shown with every character that a terminal would act on made visible
//! instead: C0 and C1 controls (ESC, and so every ANSI sequence, CR, backspace, ...), DEL,
//! the bidirectional controls that reorder what is displayed ("Trojan Source", CVE-2021-42574)
//! and the Unicode line and paragraph separators. A terminal moves the cursor, recolours or
//! reorders text only on these; text without them is printed as it reads.
//!
//! Here, beside the types, because both terminal front ends use it: the `jit` CLI and the
//! tables `jit-controller` prints itself.

use std::borrow::Cow;

/// Whether a terminal would act on `c` rather than print it.
pub fn is_unsafe(c: char) -> bool {
    c.is_control() // C0, DEL, C1
        || matches!(c,
            '\u{061C}' | '\u{200E}' | '\u{200F}' // ALM, LRM, RLM
            | '\u{202A}'..='\u{202E}' // LRE, RLE, PDF, LRO, RLO
            | '\u{2066}'..='\u{2069}' // LRI, RLI, FSI, PDI
            | '\u{2028}' | '\u{2029}') // line and paragraph separators
}

/// `s` for one line of a terminal: every unsafe character written as an escape
/// (`\x1b`, `\n`, `\u{202e}`), so that it is seen, and cannot act.
pub fn safe(s: &str) -> Cow<'_, str> {
    if !s.chars().any(is_unsafe) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        push_char(&mut out, c);
    }
    Cow::Owned(out)
}

/// Like [`safe`], for text of several lines (an export shown on a terminal): line breaks
/// (`\n`, `\r\n`) are kept, everything else unsafe is escaped.
pub fn safe_lines(s: &str) -> Cow<'_, str> {
    if !s.chars().any(|c| c != '\n' && c != '\r' && is_unsafe(c)) && !has_lone_cr(s) {
        return Cow::Borrowed(s);
    }
    let mut it = s.chars().peekable();
    let mut out = String::with_capacity(s.len() + 8);
    while let Some(c) = it.next() {
        match c {
            '\n' => out.push('\n'),
            '\r' if it.peek() == Some(&'\n') => out.push('\r'),
            c => push_char(&mut out, c),
        }
    }
    Cow::Owned(out)
}

/// JSON text (as the controller sent it) made terminal-safe without changing its value:
/// unsafe characters, which JSON allows raw only inside strings (C1 controls, bidi controls,
/// separators; C0 is always escaped by a conforming writer), become `\uXXXX` escapes. Line
/// breaks between values (pretty printing, JSON lines) are kept.
pub fn safe_json(s: &str) -> Cow<'_, str> {
    if !s.chars().any(|c| c != '\n' && is_unsafe(c)) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if c != '\n' && is_unsafe(c) {
            // Every unsafe character is in the Basic Multilingual Plane: one escape.
            out.push_str(&format!("\\u{:04x}", u32::from(c)));
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

fn has_lone_cr(s: &str) -> bool {
    let b = s.as_bytes();
    b.iter()
        .enumerate()
        .any(|(i, &x)| x == b'\r' && b.get(i + 1) != Some(&b'\n'))
}

fn push_char(out: &mut String, c: char) {
    match c {
        '\n' => out.push_str("\\n"),
        '\r' => out.push_str("\\r"),
        '\t' => out.push_str("\\t"),
        c if !is_unsafe(c) => out.push(c),
        c if u32::from(c) < 0x100 => out.push_str(&format!("\\x{:02x}", u32::from(c))),
        c => out.push_str(&format!("\\u{{{:x}}}", u32::from(c))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What no line of terminal output may contain.
    fn acts(s: &str) -> bool {
        s.chars().any(is_unsafe)
    }

    #[test]
    fn hostile_text_is_made_visible() {
        let hostile =
            "ok\x1b[2J\x1b[31mred\x1b]0;title\x07\r\x08\u{9b}31m\u{202e}gnp.exe\u{2066}\n\t\x7f";
        let s = safe(hostile);
        assert!(!acts(&s), "{s:?}");
        assert_eq!(
            s,
            "ok\\x1b[2J\\x1b[31mred\\x1b]0;title\\x07\\r\\x08\\x9b31m\\u{202e}gnp.exe\\u{2066}\\n\\t\\x7f"
        );
        // Ordinary text, also outside ASCII, is untouched (and not copied).
        for plain in [
            "deploy fix #42",
            "Änderung für Ticket 7",
            "修复",
            "a\\x1b stays",
        ] {
            assert!(matches!(safe(plain), Cow::Borrowed(_)), "{plain}");
        }
    }

    #[test]
    fn lines_keep_their_breaks_and_nothing_else() {
        let csv = "a,b\r\nx\x1b[31m,\"two\rlines\"\n\u{202e}\n";
        let s = safe_lines(csv);
        assert_eq!(s, "a,b\r\nx\\x1b[31m,\"two\\rlines\"\n\\u{202e}\n");
        assert!(
            !s.replace("\r\n", "")
                .replace('\n', "")
                .chars()
                .any(is_unsafe)
        );
        assert!(matches!(safe_lines("a,b\r\nc,d\n"), Cow::Borrowed(_)));
    }

    #[test]
    fn json_keeps_its_value() {
        let v = serde_json::json!({"j": "x\u{202e}y\u{9b}z\u{2028}", "n": 1});
        let text = serde_json::to_string_pretty(&v).unwrap();
        assert!(acts(&text.replace('\n', "")));
        let s = safe_json(&text);
        assert!(!acts(&s.replace('\n', "")), "{s}");
        assert_eq!(serde_json::from_str::<serde_json::Value>(&s).unwrap(), v);
    }
}
