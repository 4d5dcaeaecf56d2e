//! Online backup and restore of the controller's database, in one portable format for both
//! backends (so a SQLite controller's backup also restores into PostgreSQL).
//!
//! A backup is JSON lines: a header (format, schema version, source backend, time, the
//! activity log's head), then for each table a line naming it, its columns and its row count
//! followed by one JSON array per row, then a trailer with the totals and the SHA-256 of every
//! byte before it. The rows are read in one read-only snapshot transaction (a deferred
//! transaction on SQLite, `REPEATABLE READ` on PostgreSQL): consistent while the controller
//! keeps serving. Tables are written parents first (foreign keys), so a restore can insert in
//! file order.
//!
//! A restore goes into a database with nothing but what the migrations create (a new SQLite
//! file, an empty PostgreSQL database): in one transaction it migrates to the backup's schema
//! version, inserts every row, and commits only when the trailer's digest matches. Any error
//! rolls everything back. Later migrations apply when the controller next opens
//! the database.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, Write};

use futures_util::TryStreamExt;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sqlx::{AnyConnection, Row};

use crate::error::Error;
use crate::store::backend::{self, Backend, Param, Rows};
use crate::store::db::{self, SCHEMA_VERSION};
use crate::store::write::Counter;

/// The first line's `format`.
pub const FORMAT: &str = "jitgate-controller-backup";
/// The version of the format this controller writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// Rows inserted per statement (chunk) on restore.
const CHUNK: usize = 2000;
/// Longest line a restore accepts (a row with a large policy is far below).
const MAX_LINE: usize = 16 << 20;

/// Tables the migrations fill: a restore replaces their rows; every other table must be
/// empty before it.
const SEEDED: [&str; 3] = ["counters", "inventory_generation", "leases"];

/// The first line of a backup.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Header {
    pub format: String,
    pub version: u32,
    /// The schema version (last migration) of the database it was taken from.
    pub schema: i64,
    /// `sqlite` or `postgres`.
    pub source: String,
    pub created_time_utc: String,
    /// The activity log's last sequence number in the backup.
    pub activity_head: i64,
}

/// A table's line, before its rows.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct TableLine {
    table: String,
    columns: Vec<String>,
    rows: u64,
}

/// The last line.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Trailer {
    end: bool,
    tables: u64,
    rows: u64,
    sha256: String,
}

/// What a backup or a restore wrote.
#[derive(Clone, Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    pub header: Header,
    pub tables: u64,
    pub rows: u64,
    pub bytes: u64,
    pub sha256: String,
}

/// How a column's values are stored (every column of the schema is one of these).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Int,
    Text,
}

/// A table of the schema: its columns in order.
#[derive(Clone, Debug)]
struct Table {
    name: String,
    columns: Vec<(String, Kind)>,
}

/// Why a backup or a restore failed. Nothing was written to the database either way.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// The file is not a backup this controller restores, or was changed or cut short.
    #[error("{0}")]
    BadFile(String),
    /// The database to restore into already holds data.
    #[error("{0}")]
    NotEmpty(String),
    #[error("writing the backup: {0}")]
    Write(#[source] std::io::Error),
    #[error(transparent)]
    Store(#[from] Error),
}

impl From<sqlx::Error> for BackupError {
    fn from(e: sqlx::Error) -> Self {
        BackupError::Store(Error::Db(e))
    }
}

impl From<serde_json::Error> for BackupError {
    fn from(e: serde_json::Error) -> Self {
        BackupError::Store(Error::from(e))
    }
}

type Result<T> = std::result::Result<T, BackupError>;

fn refused(message: impl Into<String>) -> BackupError {
    BackupError::BadFile(message.into())
}

fn quote(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

/// The schema's tables (not the migration bookkeeping), parents before children.
async fn tables(conn: &mut AnyConnection, backend: Backend) -> Result<Vec<Table>> {
    let (names_sql, cols_sql, fks_sql) = match backend {
        Backend::Sqlite => (
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' \
             ORDER BY name",
            "SELECT name, type FROM pragma_table_info($1) ORDER BY cid",
            "SELECT m.name, f.\"table\" FROM sqlite_master m \
             JOIN pragma_foreign_key_list(m.name) f WHERE m.type = 'table'",
        ),
        Backend::Postgres => (
            "SELECT CAST(table_name AS TEXT) FROM information_schema.tables \
             WHERE table_schema = current_schema() AND table_type = 'BASE TABLE' \
             ORDER BY table_name",
            "SELECT CAST(column_name AS TEXT), CAST(data_type AS TEXT) \
             FROM information_schema.columns \
             WHERE table_schema = current_schema() AND table_name = $1 \
             ORDER BY ordinal_position",
            "SELECT CAST(CAST(c.conrelid AS regclass) AS TEXT), \
             CAST(CAST(c.confrelid AS regclass) AS TEXT) FROM pg_constraint c \
             JOIN pg_namespace n ON n.oid = c.connamespace \
             WHERE c.contype = 'f' AND n.nspname = current_schema()",
        ),
    };
    let names: Vec<(String,)> = sqlx::query_as(names_sql).fetch_all(&mut *conn).await?;
    let mut by_name = BTreeMap::new();
    for (name,) in names {
        if name == "schema_migrations" {
            continue;
        }
        let cols: Vec<(String, String)> = sqlx::query_as(cols_sql)
            .bind(&name)
            .fetch_all(&mut *conn)
            .await?;
        let mut columns = Vec::with_capacity(cols.len());
        for (col, ty) in cols {
            let t = ty.to_ascii_uppercase();
            let kind = if t.contains("INT") {
                Kind::Int
            } else if t.contains("TEXT") || t.contains("CHAR") || t.contains("CLOB") {
                Kind::Text
            } else {
                return Err(BackupError::Store(Error::Internal(format!(
                    "backup: column {name}.{col} has type {ty:?}, which the backup format \
                     does not carry"
                ))));
            };
            columns.push((col, kind));
        }
        by_name.insert(name.clone(), Table { name, columns });
    }
    // Parents first: each table after every table its foreign keys name.
    let fks: Vec<(String, String)> = sqlx::query_as(fks_sql).fetch_all(&mut *conn).await?;
    let mut parents: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for (child, parent) in &fks {
        if child != parent && by_name.contains_key(parent) {
            parents
                .entry(child.as_str())
                .or_default()
                .insert(parent.as_str());
        }
    }
    let mut order = Vec::with_capacity(by_name.len());
    let mut placed = BTreeSet::new();
    while order.len() < by_name.len() {
        let next = by_name.keys().find(|t| {
            !placed.contains(t.as_str())
                && parents
                    .get(t.as_str())
                    .is_none_or(|ps| ps.iter().all(|p| placed.contains(*p)))
        });
        let Some(next) = next else {
            return Err(BackupError::Store(Error::Internal(
                "backup: the tables' foreign keys form a cycle".into(),
            )));
        };
        placed.insert(next.as_str());
        order.push(by_name[next].clone());
    }
    Ok(order)
}

/// Writes a line and feeds it to the digest.
fn put(out: &mut impl Write, digest: &mut Sha256, bytes: &mut u64, line: &[u8]) -> Result<()> {
    out.write_all(line).map_err(BackupError::Write)?;
    out.write_all(b"\n").map_err(BackupError::Write)?;
    digest.update(line);
    digest.update(b"\n");
    *bytes += line.len() as u64 + 1;
    Ok(())
}

/// Writes a consistent backup of the database at `url` to `out`, on a connection of its own.
pub async fn dump_url(url: &str, out: &mut impl Write) -> Result<Summary> {
    use sqlx::Connection;
    sqlx::any::install_default_drivers();
    let backend = Backend::of_url(url);
    let mut conn = AnyConnection::connect(url).await?;
    if backend == Backend::Sqlite {
        sqlx::raw_sql("PRAGMA busy_timeout = 10000")
            .execute(&mut conn)
            .await?;
    }
    let result = dump(&mut conn, backend, out).await;
    let _ = conn.close().await;
    result
}

/// Writes a consistent backup of the database behind `conn` to `out`. `conn` should be a
/// connection of its own (it is left in no transaction, or dropped on error by the caller).
pub async fn dump(
    conn: &mut AnyConnection,
    backend: Backend,
    out: &mut impl Write,
) -> Result<Summary> {
    let begin = match backend {
        Backend::Sqlite => "BEGIN",
        Backend::Postgres => "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY",
    };
    sqlx::raw_sql(begin).execute(&mut *conn).await?;
    let result = dump_in(conn, backend, out).await;
    // Read-only either way: ending it changes nothing.
    let end = sqlx::raw_sql("ROLLBACK").execute(&mut *conn).await;
    let summary = result?;
    end?;
    Ok(summary)
}

async fn dump_in(
    conn: &mut AnyConnection,
    backend: Backend,
    out: &mut impl Write,
) -> Result<Summary> {
    // The first read fixes the snapshot (SQLite's deferred transaction starts here).
    let schema: i64 = sqlx::query_scalar(
        "SELECT CAST(COALESCE(MAX(version), 0) AS BIGINT) FROM schema_migrations",
    )
    .fetch_one(&mut *conn)
    .await?;
    let (head,): (i64,) = sqlx::query_as("SELECT value FROM counters WHERE name = $1")
        .bind(Counter::Chain.as_str())
        .fetch_one(&mut *conn)
        .await?;
    let header = Header {
        format: FORMAT.into(),
        version: FORMAT_VERSION,
        schema,
        source: backend.as_str().into(),
        created_time_utc: jitgate_api::time::format(jitgate_api::time::now_ms()),
        activity_head: head,
    };
    let mut digest = Sha256::new();
    let mut bytes = 0;
    put(out, &mut digest, &mut bytes, &serde_json::to_vec(&header)?)?;
    let tables = tables(conn, backend).await?;
    let mut total = 0;
    for t in &tables {
        let (n,): (i64,) = sqlx::query_as(&format!("SELECT COUNT(*) FROM {}", quote(&t.name)))
            .fetch_one(&mut *conn)
            .await?;
        let line = TableLine {
            table: t.name.clone(),
            columns: t.columns.iter().map(|(c, _)| c.clone()).collect(),
            rows: u64::try_from(n).unwrap_or(0),
        };
        put(out, &mut digest, &mut bytes, &serde_json::to_vec(&line)?)?;
        let select: Vec<String> = t
            .columns
            .iter()
            .map(|(c, k)| match k {
                // PostgreSQL's INTEGER columns read as BIGINT, like every other.
                Kind::Int => format!("CAST({} AS BIGINT)", quote(c)),
                Kind::Text => quote(c),
            })
            .collect();
        let sql = format!("SELECT {} FROM {}", select.join(", "), quote(&t.name));
        let mut rows = sqlx::query(&sql).fetch(&mut *conn);
        let mut written = 0u64;
        while let Some(r) = rows.try_next().await? {
            let mut values = Vec::with_capacity(t.columns.len());
            for (i, (_, k)) in t.columns.iter().enumerate() {
                values.push(match k {
                    Kind::Int => r
                        .try_get::<Option<i64>, _>(i)?
                        .map_or(serde_json::Value::Null, serde_json::Value::from),
                    Kind::Text => r
                        .try_get::<Option<String>, _>(i)?
                        .map_or(serde_json::Value::Null, serde_json::Value::String),
                });
            }
            put(out, &mut digest, &mut bytes, &serde_json::to_vec(&values)?)?;
            written += 1;
        }
        if written != line.rows {
            return Err(BackupError::Store(Error::Internal(format!(
                "backup: table {} changed while it was read ({} rows counted, {written} read)",
                t.name, line.rows
            ))));
        }
        total += written;
    }
    let sha256 = hex::encode(digest.finalize());
    let trailer = Trailer {
        end: true,
        tables: tables.len() as u64,
        rows: total,
        sha256: sha256.clone(),
    };
    let mut ignored = Sha256::new();
    put(
        out,
        &mut ignored,
        &mut bytes,
        &serde_json::to_vec(&trailer)?,
    )?;
    out.flush().map_err(BackupError::Write)?;
    Ok(Summary {
        header,
        tables: tables.len() as u64,
        rows: total,
        bytes,
        sha256,
    })
}

/// Reads lines of at most [`MAX_LINE`] bytes, hashing what it has read.
struct Lines<R> {
    input: R,
    digest: Sha256,
    bytes: u64,
    line: u64,
}

impl<R: BufRead> Lines<R> {
    /// The next line (without its newline), or None at the end.
    fn next(&mut self) -> Result<Option<Vec<u8>>> {
        let mut buf = Vec::new();
        let n = std::io::Read::take(&mut self.input, MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut buf)
            .map_err(|e| refused(format!("reading the backup: {e}")))?;
        if n == 0 {
            return Ok(None);
        }
        self.line += 1;
        if buf.last() != Some(&b'\n') {
            return Err(refused(if buf.len() > MAX_LINE {
                format!("line {}: longer than {MAX_LINE} bytes", self.line)
            } else {
                format!(
                    "line {}: the file ends inside a line (truncated)",
                    self.line
                )
            }));
        }
        self.bytes += buf.len() as u64;
        buf.pop();
        Ok(Some(buf))
    }

    /// Counts `line` toward the digest (every line but the trailer).
    fn hash(&mut self, line: &[u8]) {
        self.digest.update(line);
        self.digest.update(b"\n");
    }

    fn parse<T: serde::de::DeserializeOwned>(&self, line: &[u8], what: &str) -> Result<T> {
        serde_json::from_slice(line)
            .map_err(|e| refused(format!("line {}: not a {what}: {e}", self.line)))
    }
}

/// Restores `input` into the database at `url`, which must hold nothing but what the
/// migrations create. Returns what it restored; on any error nothing is written.
pub async fn restore(url: &str, input: impl BufRead) -> Result<Summary> {
    use sqlx::Connection;
    sqlx::any::install_default_drivers();
    let backend = Backend::of_url(url);
    let mut lines = Lines {
        input,
        digest: Sha256::new(),
        bytes: 0,
        line: 0,
    };
    let Some(first) = lines.next()? else {
        return Err(refused("the backup is empty"));
    };
    let header: Header = lines.parse(&first, "backup header")?;
    lines.hash(&first);
    if header.format != FORMAT {
        return Err(refused(format!(
            "not a {FORMAT} file (format {:?})",
            header.format
        )));
    }
    if header.version != FORMAT_VERSION {
        return Err(refused(format!(
            "backup format version {} (this controller reads {FORMAT_VERSION})",
            header.version
        )));
    }
    if header.schema > SCHEMA_VERSION || header.schema < 1 {
        return Err(refused(format!(
            "the backup has schema version {}; this controller knows 1..={SCHEMA_VERSION}: \
             restore with the jit-controller that made it (or a newer one)",
            header.schema
        )));
    }
    let mut conn = AnyConnection::connect(url).await?;
    if backend == Backend::Sqlite {
        sqlx::raw_sql("PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 10000")
            .execute(&mut conn)
            .await?;
    }
    let result = restore_in(&mut conn, backend, header, &mut lines).await;
    let _ = conn.close().await;
    result
}

async fn restore_in<R: BufRead>(
    conn: &mut AnyConnection,
    backend: Backend,
    header: Header,
    lines: &mut Lines<R>,
) -> Result<Summary> {
    use sqlx::Connection;
    let mut tx = conn.begin().await?;
    // Inside the transaction (each migration a savepoint): a failed restore leaves no schema.
    db::apply_migrations(&mut tx, header.schema).await?;
    let schema: BTreeMap<String, Table> = tables(&mut tx, backend)
        .await?
        .into_iter()
        .map(|t| (t.name.clone(), t))
        .collect();
    for t in schema.keys() {
        if SEEDED.contains(&t.as_str()) {
            continue;
        }
        let (n,): (i64,) = sqlx::query_as(&format!("SELECT COUNT(*) FROM {}", quote(t)))
            .fetch_one(&mut *tx)
            .await?;
        if n > 0 {
            return Err(BackupError::NotEmpty(format!(
                "the database is not empty (table {t} has {n} rows): a restore needs a \
                     new, empty one"
            )));
        }
    }
    let (head,): (i64,) = sqlx::query_as("SELECT value FROM counters WHERE name = $1")
        .bind(Counter::Chain.as_str())
        .fetch_one(&mut *tx)
        .await?;
    if head != 0 {
        return Err(BackupError::NotEmpty(
            "the database is not empty (its activity log has entries)".into(),
        ));
    }
    for t in SEEDED {
        if schema.contains_key(t) {
            sqlx::query(&format!("DELETE FROM {}", quote(t)))
                .execute(&mut *tx)
                .await?;
        }
    }
    let mut seen = BTreeSet::new();
    let mut total = 0u64;
    let trailer = loop {
        let Some(line) = lines.next()? else {
            return Err(refused("the backup ends without its trailer (truncated)"));
        };
        let v: serde_json::Value = lines.parse(&line, "JSON line")?;
        if v.get("end").is_some() {
            break lines.parse::<Trailer>(&line, "trailer")?;
        }
        let t: TableLine = lines.parse(&line, "table line")?;
        lines.hash(&line);
        let Some(table) = schema.get(&t.table) else {
            return Err(refused(format!(
                "line {}: table {:?} is not in schema version {}",
                lines.line, t.table, header.schema
            )));
        };
        if !seen.insert(t.table.clone()) {
            return Err(refused(format!(
                "line {}: table {} appears twice",
                lines.line, t.table
            )));
        }
        let kinds: BTreeMap<&str, Kind> = table
            .columns
            .iter()
            .map(|(c, k)| (c.as_str(), *k))
            .collect();
        let named: BTreeSet<&str> = t.columns.iter().map(String::as_str).collect();
        if named.len() != t.columns.len() || named != kinds.keys().copied().collect() {
            return Err(refused(format!(
                "line {}: table {} has columns {:?}, the backup names {:?}",
                lines.line,
                t.table,
                table.columns.iter().map(|(c, _)| c).collect::<Vec<_>>(),
                t.columns
            )));
        }
        let cols: Vec<Kind> = t.columns.iter().map(|c| kinds[c.as_str()]).collect();
        let head = format!(
            "INSERT INTO {} ({})",
            quote(&t.table),
            t.columns
                .iter()
                .map(|c| quote(c))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let mut chunk = Rows::new(head.clone(), cols.len());
        for _ in 0..t.rows {
            let Some(line) = lines.next()? else {
                return Err(refused(format!(
                    "table {}: the file ends before its {} rows (truncated)",
                    t.table, t.rows
                )));
            };
            lines.hash(&line);
            let values: Vec<serde_json::Value> = lines.parse(&line, "row (JSON array)")?;
            if values.len() != cols.len() {
                return Err(refused(format!(
                    "line {}: {} values for {} columns of {}",
                    lines.line,
                    values.len(),
                    cols.len(),
                    t.table
                )));
            }
            let mut row = Vec::with_capacity(cols.len());
            for ((v, k), c) in values.into_iter().zip(&cols).zip(&t.columns) {
                row.push(match (v, k) {
                    (serde_json::Value::Null, _) => Param::Null,
                    (serde_json::Value::Number(n), Kind::Int) if n.is_i64() => {
                        Param::Int(n.as_i64().unwrap_or_default())
                    }
                    (serde_json::Value::String(s), Kind::Text) => Param::Text(s),
                    (other, _) => {
                        return Err(refused(format!(
                            "line {}: {}.{c}: {other} is not {}",
                            lines.line,
                            t.table,
                            if *k == Kind::Int {
                                "an integer"
                            } else {
                                "a string"
                            }
                        )));
                    }
                });
            }
            chunk.rows.push(row);
            if chunk.rows.len() >= CHUNK {
                let full = std::mem::replace(&mut chunk, Rows::new(head.clone(), cols.len()));
                backend::insert(&mut tx, backend, full).await?;
            }
        }
        backend::insert(&mut tx, backend, chunk).await?;
        total += t.rows;
    };
    let digest = hex::encode(std::mem::take(&mut lines.digest).finalize());
    if !trailer.end || trailer.sha256 != digest {
        return Err(refused(format!(
            "the backup's digest does not match its content (sha256 {digest}, trailer says \
             {}): the file was changed or damaged",
            trailer.sha256
        )));
    }
    if trailer.rows != total || trailer.tables != seen.len() as u64 {
        return Err(refused(format!(
            "the trailer counts {} tables and {} rows, the file has {} and {total}",
            trailer.tables,
            trailer.rows,
            seen.len()
        )));
    }
    if let Some(missing) = schema.keys().find(|t| !seen.contains(*t)) {
        return Err(refused(format!("the backup lacks table {missing}")));
    }
    if lines.next()?.is_some() {
        return Err(refused(format!(
            "line {}: data after the trailer",
            lines.line
        )));
    }
    let (head,): (i64,) = sqlx::query_as("SELECT value FROM counters WHERE name = $1")
        .bind(Counter::Chain.as_str())
        .fetch_one(&mut *tx)
        .await?;
    if head != header.activity_head {
        return Err(refused(format!(
            "the header says the activity log ends at {}, the rows at {head}",
            header.activity_head
        )));
    }
    tx.commit().await?;
    Ok(Summary {
        header,
        tables: seen.len() as u64,
        rows: total,
        bytes: lines.bytes,
        sha256: digest,
    })
}
