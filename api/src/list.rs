//! What the list endpoints share: the `{"value": [...]}` envelope and the `format` parameter.

use serde::{Deserialize, Serialize};

use crate::wire::wire_enum;

/// A list response: `{"value": [...]}` (Azure's envelope).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct List<T> {
    pub value: Vec<T>,
}

impl<T> From<Vec<T>> for List<T> {
    fn from(value: Vec<T>) -> List<T> {
        List { value }
    }
}

wire_enum! {
    /// The `format` query parameter (each endpoint names which it offers).
    pub enum Format("format") {
        Json = "json",
        /// JSON lines.
        Jsonl = "jsonl",
        /// RFC 4180 with a header row.
        Csv = "csv",
    }
}
