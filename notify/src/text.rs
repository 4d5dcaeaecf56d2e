//! Text that people or agents wrote, made inert for each place it is shown.
//!
//! Every renderer passes every dynamic string through [`clean`] (or [`one_line`]) first and
//! then through its format's escaper. `clean` removes what no format should carry: control
//! characters (a CR or LF must never reach a header), and the Unicode bidirectional controls
//! that make text display in another order than it reads (they are replaced by U+FFFD so a
//! reader sees that something was there).

/// Bidirectional formatting characters (Trojan Source, CVE-2021-42574) and marks.
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// Multi-line text with line breaks normalised to `\n`, tabs to spaces, other control
/// characters dropped and bidirectional controls replaced by U+FFFD.
pub fn clean(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\r' => {
                if chars.peek() == Some(&'\n') {
                    chars.next();
                }
                out.push('\n');
            }
            '\n' | '\u{2028}' | '\u{2029}' | '\u{0085}' => out.push('\n'),
            '\t' => out.push(' '),
            c if is_bidi_control(c) => out.push('\u{FFFD}'),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

/// [`clean`], with every line break turned into a space: for names and other one-line values.
pub fn one_line(s: &str) -> String {
    clean(s).replace('\n', " ")
}

/// At most `max` characters, ending in `…` when shortened.
pub fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// Replaces the characters `entity` names, keeps the rest.
fn escape(s: &str, entity: impl Fn(char) -> Option<&'static str>) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match entity(c) {
            Some(e) => out.push_str(e),
            None => out.push(c),
        }
    }
    out
}

/// Slack mrkdwn: `&`, `<` and `>` are its control characters (`<!channel>`, `<@U123>`,
/// `<http://x|label>`); escaped as Slack documents, they display as themselves.
pub fn slack(s: &str) -> String {
    escape(s, |c| match c {
        '&' => Some("&amp;"),
        '<' => Some("&lt;"),
        '>' => Some("&gt;"),
        _ => None,
    })
}

/// Slack mrkdwn for a multi-line value: escaped, each line quoted (`>` at the start of a line
/// is Slack's block quote), so written text cannot pass for the message's own lines.
pub fn slack_quote(s: &str) -> String {
    clean(s)
        .lines()
        .map(|l| format!(">{}", slack(l)))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Adaptive Card `TextRun` text. A TextRun has no Markdown (the schema says "Markdown is not
/// supported"), so the only live syntax left is the `{{DATE(...)}}`/`{{TIME(...)}}` functions;
/// a zero-width space between the braces keeps them text.
pub fn adaptive_run(s: &str) -> String {
    s.replace("{{", "{\u{200B}{")
}

/// Adaptive Card Markdown (its CommonMark subset, for `TextBlock` and `Fact`): every ASCII
/// punctuation character that the subset or CommonMark gives a meaning is backslash-escaped,
/// and the date functions are broken as in [`adaptive_run`]. The renderers keep written text
/// out of Markdown fields altogether; this is for the fields where it cannot be avoided.
pub fn adaptive_markdown(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(
            c,
            '\\' | '*'
                | '_'
                | '['
                | ']'
                | '('
                | ')'
                | '#'
                | '+'
                | '-'
                | '.'
                | '!'
                | '`'
                | '~'
                | '>'
                | '<'
                | '|'
                | '{'
                | '}'
        ) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// HTML text and attribute values.
pub fn html(s: &str) -> String {
    escape(s, |c| match c {
        '&' => Some("&amp;"),
        '<' => Some("&lt;"),
        '>' => Some("&gt;"),
        '"' => Some("&quot;"),
        '\'' => Some("&#39;"),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_drops_controls_and_marks_bidi() {
        assert_eq!(clean("a\r\nb\rc\nd"), "a\nb\nc\nd");
        assert_eq!(clean("x\u{0}\u{7}\u{1b}[31my"), "x[31my");
        assert_eq!(
            clean("evil\u{202E}txt.exe\u{2066}"),
            "evil\u{FFFD}txt.exe\u{FFFD}"
        );
        assert_eq!(one_line("Subject: x\r\nBcc: y"), "Subject: x Bcc: y");
        assert_eq!(clean("a\u{2028}b"), "a\nb");
    }

    #[test]
    fn slack_neutralises_mentions_and_links() {
        assert_eq!(
            slack("<!channel> & <http://x|y>"),
            "&lt;!channel&gt; &amp; &lt;http://x|y&gt;"
        );
        assert_eq!(slack_quote("a\n<!here>"), ">a\n>&lt;!here&gt;");
    }

    #[test]
    fn adaptive_markdown_escapes_links_and_emphasis() {
        assert_eq!(
            adaptive_markdown("[x](http://y) **b**"),
            "\\[x\\]\\(http://y\\) \\*\\*b\\*\\*"
        );
        assert_eq!(
            adaptive_run("{{DATE(2017-02-14T06:08:39Z, SHORT)}}"),
            "{\u{200B}{DATE(2017-02-14T06:08:39Z, SHORT)}}"
        );
    }

    #[test]
    fn html_escapes_markup_and_quotes() {
        assert_eq!(
            html("<img src=x onerror=\"a('b')\">&"),
            "&lt;img src=x onerror=&quot;a(&#39;b&#39;)&quot;&gt;&amp;"
        );
    }

    #[test]
    fn truncate_counts_characters() {
        assert_eq!(truncate("äöü", 3), "äöü");
        assert_eq!(truncate("äöüß", 3), "äö…");
    }
}
