//! The one table printer of the CLI: fixed-width columns, a header row, and every cell made
//! terminal-safe ([`crate::text::safe`]) on its way out, so that no command can forget it.

use std::fmt::Write as _;

use crate::text::safe;

/// One column: its header, the width it is padded to, and its alignment. A longer cell
/// widens its own row rather than being cut (an id or an address is never shortened).
#[derive(Clone, Copy)]
pub struct Col {
    pub head: &'static str,
    pub width: usize,
    pub right: bool,
}

/// A left-aligned column.
pub const fn col(head: &'static str, width: usize) -> Col {
    Col {
        head,
        width,
        right: false,
    }
}

/// A right-aligned column (counts).
pub const fn num(head: &'static str, width: usize) -> Col {
    Col {
        head,
        width,
        right: true,
    }
}

/// A table's layout. The last column is never padded.
pub struct Table {
    cols: &'static [Col],
    /// Between two columns.
    gap: &'static str,
    /// Before the first column (nested tables).
    indent: &'static str,
}

impl Table {
    pub const fn new(cols: &'static [Col]) -> Table {
        Table {
            cols,
            gap: " ",
            indent: "",
        }
    }

    pub const fn gap(self, gap: &'static str) -> Table {
        Table { gap, ..self }
    }

    pub const fn indent(self, indent: &'static str) -> Table {
        Table { indent, ..self }
    }

    /// The header line.
    pub fn header(&self) -> String {
        let heads: Vec<&str> = self.cols.iter().map(|c| c.head).collect();
        self.line(&heads)
    }

    /// One row; missing cells are empty, extra cells are dropped.
    pub fn row<S: AsRef<str>>(&self, cells: &[S]) -> String {
        self.line(cells)
    }

    pub fn print_header(&self) {
        println!("{}", self.header());
    }

    pub fn print_row<S: AsRef<str>>(&self, cells: &[S]) {
        println!("{}", self.row(cells));
    }

    fn line<S: AsRef<str>>(&self, cells: &[S]) -> String {
        let mut out = String::from(self.indent);
        let last = self.cols.len().saturating_sub(1);
        for (i, c) in self.cols.iter().enumerate() {
            let cell = cells.get(i).map_or("", AsRef::as_ref);
            let cell = safe(cell);
            if i > 0 {
                out.push_str(self.gap);
            }
            // Writing to a String cannot fail.
            let _ = match (i == last, c.right) {
                (true, false) => write!(out, "{cell}"),
                (_, true) => write!(out, "{cell:>w$}", w = c.width),
                (false, false) => write!(out, "{cell:<w$}", w = c.width),
            };
        }
        out
    }
}

/// `-` for what is absent, as every table shows it.
pub fn or_dash<T: ToString>(v: Option<T>) -> String {
    v.map_or_else(|| "-".to_string(), |x| x.to_string())
}

/// A list as one cell: comma-separated, `-` when empty.
pub fn list(items: &[String]) -> String {
    if items.is_empty() {
        "-".into()
    } else {
        items.join(",")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Table = Table::new(&[col("NAME", 6), num("N", 3), col("NOTE", 4)]);

    #[test]
    fn layout() {
        assert_eq!(T.header(), "NAME     N NOTE");
        assert_eq!(T.row(&["web1", "7", "x"]), "web1     7 x");
        // A long cell widens its row; the last column is not padded.
        assert_eq!(T.row(&["web-0001", "12345", "y"]), "web-0001 12345 y");
        assert_eq!(T.row(&["a"]), "a          ");
        const NESTED: Table = Table::new(&[col("A", 2), col("B", 1)])
            .gap("  ")
            .indent("    ");
        assert_eq!(NESTED.row(&["x", "y"]), "    x   y");
    }

    #[test]
    fn every_cell_is_terminal_safe() {
        let r = T.row(&["\x1b[31mred", "1", "\u{202e}evil\r"]);
        assert_eq!(r, "\\x1b[31mred   1 \\u{202e}evil\\r");
        assert!(!r.chars().any(crate::text::is_unsafe));
    }
}
