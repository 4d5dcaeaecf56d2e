//! CSV exports (RFC 4180, the maintained `csv` crate): a header row, then one row per record.
//!
//! Free text reaches these files from people and agents (justifications, owners, names,
//! agent records), and a spreadsheet runs a cell that starts with `=`, `+`, `-`, `@`, a tab or
//! a carriage return as a formula (OWASP "CSV injection", CWE-1236). Every text cell that
//! starts so is written with a leading `'`, which spreadsheets show as text; numbers are
//! written as numbers.

use crate::error::{Error, Result};

/// One cell of a row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Cell {
    /// Text, neutralised if a spreadsheet would take it for a formula.
    Text(String),
    Int(i64),
    /// Nothing (an absent optional value).
    Empty,
}

impl From<&str> for Cell {
    fn from(s: &str) -> Cell {
        Cell::Text(s.to_string())
    }
}

impl From<String> for Cell {
    fn from(s: String) -> Cell {
        Cell::Text(s)
    }
}

impl From<Option<&str>> for Cell {
    fn from(s: Option<&str>) -> Cell {
        s.map_or(Cell::Empty, Cell::from)
    }
}

impl From<i64> for Cell {
    fn from(n: i64) -> Cell {
        Cell::Int(n)
    }
}

/// The text of a cell as written.
fn text(c: &Cell) -> std::borrow::Cow<'_, str> {
    match c {
        Cell::Text(s) if s.starts_with(['=', '+', '-', '@', '\t', '\r']) => format!("'{s}").into(),
        Cell::Text(s) => s.as_str().into(),
        Cell::Int(n) => n.to_string().into(),
        Cell::Empty => "".into(),
    }
}

/// The whole file: `header`, then `rows`; fields quoted where they hold a comma, a quote or
/// a line break; lines end with `\n`.
pub fn write<I: IntoIterator<Item = Vec<Cell>>>(header: &[&str], rows: I) -> Result<String> {
    let failed = |e: csv::Error| Error::Internal(format!("writing CSV: {e}"));
    let mut w = csv::WriterBuilder::new()
        .terminator(csv::Terminator::Any(b'\n'))
        .from_writer(Vec::new());
    w.write_record(header).map_err(failed)?;
    for row in rows {
        w.write_record(row.iter().map(|c| text(c).into_owned()))
            .map_err(failed)?;
    }
    let bytes = w
        .into_inner()
        .map_err(|e| Error::Internal(format!("writing CSV: {e}")))?;
    String::from_utf8(bytes).map_err(|e| Error::Internal(format!("writing CSV: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        let text = write(
            &["a", "b"],
            [vec![Cell::from("x,y"), Cell::from("say \"hi\"\nbye")]],
        )
        .unwrap();
        assert_eq!(text, "a,b\n\"x,y\",\"say \"\"hi\"\"\nbye\"\n");
    }

    #[test]
    fn formulas_are_shown_as_text_and_numbers_stay_numbers() {
        let rows = vec![vec![
            Cell::from("=HYPERLINK(\"http://x\",\"y\")"),
            Cell::from("+1"),
            Cell::from("-2"),
            Cell::from("@SUM(A1)"),
            Cell::from("\tx"),
            Cell::from("\rx"),
            Cell::Int(-5),
            Cell::from("plain = text"),
            Cell::Empty,
        ]];
        let text = write(&["a", "b", "c", "d", "e", "f", "n", "g", "h"], rows).unwrap();
        let line = text.lines().nth(1).unwrap();
        assert_eq!(
            line,
            "\"'=HYPERLINK(\"\"http://x\"\",\"\"y\"\")\",'+1,'-2,'@SUM(A1),'\tx,\"'\rx\",-5,plain = text,"
        );
    }
}
