//! Where results go: `--json` prints the controller's JSON as received (pretty-printed,
//! every field kept, terminal-safe escapes only), otherwise each command's human view.

use std::io::{IsTerminal, Write};

use jitgate_api::List;
use serde::Serialize;
use serde_json::Value;

use crate::client::Reply;
use crate::exit::{Fail, R};
use crate::text::{safe_json, safe_lines};

/// How to print: JSON for scripts, or tables for people.
#[derive(Clone, Copy)]
pub struct Out {
    pub json: bool,
}

impl Out {
    /// `--json`: the reply as received; otherwise `human`.
    pub fn show<T>(self, reply: &Reply<T>, human: impl FnOnce(&T)) -> R<()> {
        if self.json {
            print_raw(reply.text())?;
        } else {
            human(reply);
        }
        Ok(())
    }

    /// `--json`: the list's items as received (the `value` of the envelope); otherwise
    /// `human`.
    pub fn show_list<T>(self, reply: &Reply<List<T>>, human: impl FnOnce(&[T])) -> R<()> {
        if self.json {
            let raw: List<Value> = serde_json::from_str(reply.text())
                .map_err(|e| Fail::error(format!("the controller's answer: {e}")))?;
            print_json(&raw.value);
        } else {
            human(&reply.value);
        }
        Ok(())
    }
}

/// JSON text as received, pretty and terminal-safe (every field kept, the value unchanged).
pub fn print_raw(text: &str) -> R<()> {
    let v: Value = serde_json::from_str(text)
        .map_err(|e| Fail::error(format!("the controller's answer: {e}")))?;
    print_json(&v);
    Ok(())
}

/// Pretty JSON on stdout, made terminal-safe (the value is unchanged).
pub fn print_json<T: Serialize + ?Sized>(v: &T) {
    match serde_json::to_string_pretty(v) {
        Ok(text) => println!("{}", safe_json(&text)),
        Err(e) => eprintln!("jit: printing JSON: {e}"),
    }
}

/// What an export is, for showing it on a terminal.
#[derive(Clone, Copy)]
pub enum ExportKind {
    Csv,
    JsonLines,
    /// A declaration file (`jit export`): TOML strings take the same `\uXXXX` escapes as JSON.
    Toml,
}

/// An export (CSV, JSON lines, TOML) as received: byte for byte into a pipe or file; made
/// terminal-safe when stdout is a terminal.
pub fn print_export(text: &str, kind: ExportKind) -> R<()> {
    let mut out = std::io::stdout().lock();
    let r = if out.is_terminal() {
        let shown = match kind {
            ExportKind::Csv => safe_lines(text),
            ExportKind::JsonLines | ExportKind::Toml => safe_json(text),
        };
        out.write_all(shown.as_bytes())
    } else {
        out.write_all(text.as_bytes())
    };
    r.and_then(|()| out.flush())
        .map_err(|e| Fail::error(format!("writing the export: {e}")))
}
