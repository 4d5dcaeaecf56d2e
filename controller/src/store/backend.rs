//! The database dialects and where they differ. All SQL is portable (`$n` placeholders,
//! BIGINT/TEXT columns, `UPDATE ... RETURNING`) except the fast paths named here: on SQLite
//! a multi-row insert is one JSON parameter expanded by `json_each` (one cached statement
//! whatever the row count) and several statements may share one round trip; elsewhere a
//! multi-row `VALUES` list, one statement per chunk.

use sqlx::AnyConnection;

use crate::error::Result;

jitgate_api::wire_enum! {
    /// Which database a controller runs on (chosen by `database_url`).
    pub enum Backend("database") {
        /// Embedded, a file in the state directory: the default.
        Sqlite = "sqlite",
        /// One database for several controllers.
        Postgres = "postgres",
    }
}

impl Backend {
    /// The backend of a `database_url` (anything but `sqlite:` is PostgreSQL's).
    pub fn of_url(url: &str) -> Backend {
        if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else {
            Backend::Postgres
        }
    }
}

/// Largest number of bind parameters per statement (SQLite's limit is 32766).
const MAX_PARAMS: usize = 30_000;

/// A bind value of a multi-row insert.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Param {
    Int(i64),
    Text(String),
    Null,
}

impl From<i64> for Param {
    fn from(v: i64) -> Param {
        Param::Int(v)
    }
}

impl From<String> for Param {
    fn from(v: String) -> Param {
        Param::Text(v)
    }
}

impl From<&str> for Param {
    fn from(v: &str) -> Param {
        Param::Text(v.to_string())
    }
}

impl<T: Into<Param>> From<Option<T>> for Param {
    fn from(v: Option<T>) -> Param {
        v.map_or(Param::Null, Into::into)
    }
}

/// Rows for one table: `INSERT INTO t (a, b, ...)` and each row's values in that order.
pub struct Rows {
    pub head: std::borrow::Cow<'static, str>,
    pub cols: usize,
    pub rows: Vec<Vec<Param>>,
}

impl Rows {
    pub fn new(head: impl Into<std::borrow::Cow<'static, str>>, cols: usize) -> Rows {
        Rows {
            head: head.into(),
            cols,
            rows: Vec::new(),
        }
    }
}

/// All rows as one JSON array of arrays, for `json_each` (SQLite).
fn rows_json(rows: Vec<Vec<Param>>) -> Result<String> {
    let data: Vec<serde_json::Value> = rows
        .into_iter()
        .map(|r| {
            serde_json::Value::Array(
                r.into_iter()
                    .map(|v| match v {
                        Param::Int(i) => serde_json::Value::from(i),
                        Param::Text(s) => serde_json::Value::String(s),
                        Param::Null => serde_json::Value::Null,
                    })
                    .collect(),
            )
        })
        .collect();
    Ok(serde_json::to_string(&data)?)
}

/// SQLite: an insert of every row of `t` from JSON parameter `$n`.
fn sqlite_insert(t: &Rows, n: usize) -> String {
    let exprs: Vec<String> = (0..t.cols).map(|c| format!("value ->> {c}")).collect();
    format!(
        "{} SELECT {} FROM json_each(${n})",
        t.head,
        exprs.join(", ")
    )
}

/// Inserts every row, with as few statements as the backend allows.
pub async fn insert(conn: &mut AnyConnection, backend: Backend, t: Rows) -> Result<()> {
    if t.rows.is_empty() {
        return Ok(());
    }
    if backend == Backend::Sqlite {
        let sql = sqlite_insert(&t, 1);
        sqlx::query(&sql)
            .bind(rows_json(t.rows)?)
            .execute(&mut *conn)
            .await?;
        return Ok(());
    }
    let per = (MAX_PARAMS / t.cols).max(1);
    let mut it = t.rows.into_iter().peekable();
    while it.peek().is_some() {
        let chunk: Vec<Vec<Param>> = it.by_ref().take(per).collect();
        let mut sql = t.head.to_string();
        sql.push_str(" VALUES ");
        let mut n = 1;
        for (i, row) in chunk.iter().enumerate() {
            if i > 0 {
                sql.push(',');
            }
            sql.push('(');
            for (c, v) in row.iter().enumerate() {
                if c > 0 {
                    sql.push(',');
                }
                // A NULL literal fits a column of any type (a bound NULL has the bind's
                // type, and PostgreSQL refuses text into bigint).
                if *v == Param::Null {
                    sql.push_str("NULL");
                } else {
                    sql.push_str(&format!("${n}"));
                    n += 1;
                }
            }
            sql.push(')');
        }
        let mut q = sqlx::query(&sql);
        for row in chunk {
            for v in row {
                q = match v {
                    Param::Int(i) => q.bind(i),
                    Param::Text(s) => q.bind(s),
                    Param::Null => q,
                };
            }
        }
        q.execute(&mut *conn).await?;
    }
    Ok(())
}

/// SQLite: every table's inserts, then `tail` (whose parameters follow), in one query: one
/// round trip. Returns the SQL and its parameters; the tail's parameters are bound after
/// them, starting at `$` + (returned count + 1).
pub fn sqlite_batch(tables: Vec<Rows>, tail: &str) -> Result<(String, Vec<String>)> {
    let mut sql = String::new();
    let mut params = Vec::new();
    for t in tables {
        if t.rows.is_empty() {
            continue;
        }
        sql.push_str(&sqlite_insert(&t, params.len() + 1));
        sql.push_str(";\n");
        params.push(rows_json(t.rows)?);
    }
    sql.push_str(tail);
    Ok((sql, params))
}

/// `$from, $from+1, ...`: `n` numbered placeholders, in the order they are bound (SQLite
/// numbers placeholders as they first appear).
pub fn placeholders(from: usize, n: usize) -> String {
    (from..from + n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `(a = $from AND b = $from+1) OR (a = $from+2 AND b = $from+3) OR ...`: `n` pairs,
/// bound pair by pair. OR-ed equalities rather than `(a, b) IN (VALUES ...)`, which
/// SQLite's planner answers from another index (a scan of every active row).
pub fn pair_matches(a: &str, b: &str, from: usize, n: usize) -> String {
    (0..n)
        .map(|i| format!("({a} = ${} AND {b} = ${})", from + 2 * i, from + 2 * i + 1))
        .collect::<Vec<_>>()
        .join(" OR ")
}
