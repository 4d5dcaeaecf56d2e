//! CSV exports (RFC 4180): a header row, then one row per record; a field is quoted when it
//! holds a comma, a quote or a line break.

fn field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

pub fn write<I: IntoIterator<Item = Vec<String>>>(header: &[&str], rows: I) -> String {
    let mut out = header.join(",");
    out.push('\n');
    for row in rows {
        let line: Vec<String> = row.iter().map(|c| field(c)).collect();
        out.push_str(&line.join(","));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn quoting() {
        let text = super::write(
            &["a", "b"],
            [vec!["x,y".to_string(), "say \"hi\"\nbye".to_string()]],
        );
        assert_eq!(text, "a,b\n\"x,y\",\"say \"\"hi\"\"\nbye\"\n");
    }
}
