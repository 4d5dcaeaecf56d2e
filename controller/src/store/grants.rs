//! The `grants` and `grant_outbox` tables.
//!
//! A grant is one (VM, port, concrete protocol, source prefix, window) of an approved request.
//! Every change an agent must make is an outbox row, written in the same transaction as the
//! decision: `apply` carries a grant (and the grants it supersedes, removed only once it is in
//! place), `revoke` withdraws one. Each VM's agent connection reads its rows in seq order.

use jitgate_api::{MaxConnections, OnExpiry, ProtoSel};
use jitgate_common::Protocol;
use sqlx::{Any, AnyConnection, Executor};
use std::collections::HashSet;

use crate::error::{Error, Result};
use crate::store::backend::{Rows, pair_matches};
use crate::store::write::{Counter, WriteTx};

jitgate_api::wire_enum! {
    /// Where a grant stands.
    pub enum GrantState("grant state") {
        /// Queued; the agent has not confirmed it yet.
        Pending = "pending",
        /// In the agent's maps.
        Applied = "applied",
        /// Replaced by a newer grant for the same (VM, port, protocol, prefix).
        Superseded = "superseded",
        Revoked = "revoked",
        Expired = "expired",
    }
}

impl GrantState {
    /// Pending or applied: the grant admits traffic (until its end).
    pub fn is_active(self) -> bool {
        matches!(self, GrantState::Pending | GrantState::Applied)
    }
}

jitgate_api::wire_enum! {
    /// What an outbox row asks the agent to do.
    pub enum OutboxOp("outbox op") {
        Apply = "apply",
        Revoke = "revoke",
    }
}

/// `state IN ($a, $b)` for the active states, with the placeholders given.
fn active_in(a: usize) -> String {
    format!("state IN (${a}, ${})", a + 1)
}

const PENDING: &str = GrantState::Pending.as_str();
const APPLIED: &str = GrantState::Applied.as_str();

/// An outbox row with its grant's fields, as the agent channel sends it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutboxItem {
    pub seq: i64,
    pub vm: String,
    pub op: OutboxOp,
    pub grant_id: String,
    pub request_id: String,
    pub protocol: ProtoSel,
    pub port: u16,
    pub prefix: String,
    pub start_ms: i64,
    pub end_ms: i64,
    pub on_expiry: OnExpiry,
    /// The grant admits at most this many new connections (sent as a `LimitedGrant`, only
    /// to an agent at protocol level 5 or later); None: unlimited.
    pub max_connections: Option<MaxConnections>,
    /// Grants this one supersedes: the agent removes them only once this one is in place,
    /// so a flow the new grant covers is never cut.
    pub replaces: Vec<String>,
}

#[derive(sqlx::FromRow)]
struct OutboxRow {
    seq: i64,
    vm: String,
    #[sqlx(try_from = "String")]
    op: OutboxOp,
    grant_id: String,
    replaces: String,
    request_id: String,
    #[sqlx(try_from = "String")]
    protocol: ProtoSel,
    port: i64,
    prefix: String,
    start_ms: i64,
    end_ms: i64,
    on_expiry: String,
    max_connections: Option<i64>,
}

/// The VM's outbox rows after `after_seq`, oldest first.
pub async fn outbox(
    ex: impl Executor<'_, Database = Any>,
    vm: &str,
    after_seq: i64,
    limit: i64,
) -> Result<Vec<OutboxItem>> {
    let rows: Vec<OutboxRow> = sqlx::query_as(
        "SELECT o.seq, o.vm, o.op, o.grant_id, o.replaces, g.request_id, g.protocol, g.port, \
         g.prefix, g.start_ms, g.end_ms, g.on_expiry, g.max_connections FROM grant_outbox o \
         JOIN grants g ON g.id = o.grant_id WHERE o.vm = $1 AND o.seq > $2 ORDER BY o.seq LIMIT $3",
    )
    .bind(vm)
    .bind(after_seq)
    .bind(limit)
    .fetch_all(ex)
    .await?;
    rows.into_iter()
        .map(|r| {
            Ok(OutboxItem {
                seq: r.seq,
                vm: r.vm,
                op: r.op,
                grant_id: r.grant_id,
                replaces: r
                    .replaces
                    .split(',')
                    .filter(|s| !s.is_empty())
                    .map(String::from)
                    .collect(),
                request_id: r.request_id,
                protocol: r.protocol,
                port: u16::try_from(r.port).map_err(Error::corrupt)?,
                prefix: r.prefix,
                start_ms: r.start_ms,
                end_ms: r.end_ms,
                on_expiry: r
                    .on_expiry
                    .parse()
                    .map_err(|_| Error::Corrupt(format!("grant on_expiry {:?}", r.on_expiry)))?,
                max_connections: crate::store::requests::stored_limit(r.max_connections)?,
            })
        })
        .collect()
}

/// A grant as the acknowledgement reads it.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct GrantRow {
    pub id: String,
    pub request_id: String,
    pub port_idx: i64,
    pub vm: String,
    #[sqlx(try_from = "String")]
    pub state: GrantState,
    pub port: i64,
    pub protocol: String,
    pub prefix: String,
}

pub async fn get(w: &mut WriteTx, id: &str) -> Result<Option<GrantRow>> {
    Ok(sqlx::query_as(
        "SELECT id, request_id, port_idx, vm, state, port, protocol, prefix FROM grants \
         WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(w.conn())
    .await?)
}

pub async fn set_state(w: &mut WriteTx, id: &str, state: GrantState) -> Result<()> {
    sqlx::query("UPDATE grants SET state = $1 WHERE id = $2")
        .bind(state.as_str())
        .bind(id)
        .execute(w.conn())
        .await?;
    Ok(())
}

/// What [`mark_delivered`] runs: by `grant_outbox_by_grant` (migration 38), once per
/// acknowledgement.
pub const MARK_DELIVERED: &str =
    "UPDATE grant_outbox SET delivered_ms = $1 WHERE grant_id = $2 AND op = $3";

/// The agent confirmed the grant's `apply` row.
pub async fn mark_delivered(w: &mut WriteTx, id: &str) -> Result<()> {
    let now = w.now;
    sqlx::query(MARK_DELIVERED)
        .bind(now)
        .bind(id)
        .bind(OutboxOp::Apply.as_str())
        .execute(w.conn())
        .await?;
    Ok(())
}

/// Whether any grant of (request, port) is in `state`.
pub async fn port_has(
    w: &mut WriteTx,
    request_id: &str,
    port_idx: i64,
    state: GrantState,
) -> Result<bool> {
    let row: Option<(String,)> = sqlx::query_as(
        "SELECT id FROM grants WHERE request_id = $1 AND port_idx = $2 AND state = $3 LIMIT 1",
    )
    .bind(request_id)
    .bind(port_idx)
    .bind(state.as_str())
    .fetch_optional(w.conn())
    .await?;
    Ok(row.is_some())
}

/// Pairs per statement of [`ports_with_active`]: two parameters each.
const PORTS_CHUNK: usize = 200;

/// Which of `ports` (request, port index) still have an active grant. The state is
/// checked here, not in SQL, so that the lookup follows `grants_by_request` (SQLite would
/// otherwise scan every active grant by state).
pub async fn ports_with_active(
    w: &mut WriteTx,
    ports: &[(String, i64)],
) -> Result<HashSet<(String, i64)>> {
    let mut out = HashSet::new();
    for chunk in ports.chunks(PORTS_CHUNK) {
        let sql = format!(
            "SELECT request_id, port_idx, state FROM grants WHERE {}",
            pair_matches("request_id", "port_idx", 1, chunk.len())
        );
        let mut q = sqlx::query_as::<_, (String, i64, String)>(&sql);
        for (id, idx) in chunk {
            q = q.bind(id.as_str()).bind(*idx);
        }
        for (id, idx, state) in q.fetch_all(w.conn()).await? {
            if state == PENDING || state == APPLIED {
                out.insert((id, idx));
            }
        }
    }
    Ok(out)
}

/// Revokes the request's active grants, each with an outbox `revoke` row for its VM's agent.
pub async fn revoke_request(w: &mut WriteTx, request_id: &str) -> Result<()> {
    let active: Vec<(String, String)> = sqlx::query_as(&format!(
        "SELECT id, vm FROM grants WHERE request_id = $1 AND {}",
        active_in(2)
    ))
    .bind(request_id)
    .bind(PENDING)
    .bind(APPLIED)
    .fetch_all(w.conn())
    .await?;
    sqlx::query(&format!(
        "UPDATE grants SET state = $1 WHERE request_id = $2 AND {}",
        active_in(3)
    ))
    .bind(GrantState::Revoked.as_str())
    .bind(request_id)
    .bind(PENDING)
    .bind(APPLIED)
    .execute(w.conn())
    .await?;
    for (id, vm) in active {
        let seq = w.next(Counter::Outbox);
        w.outbox_written(&vm);
        let now = w.now;
        sqlx::query(
            "INSERT INTO grant_outbox (seq, vm, op, grant_id, replaces, created_ms, delivered_ms) \
             VALUES ($1, $2, $3, $4, '', $5, NULL)",
        )
        .bind(seq)
        .bind(&vm)
        .bind(OutboxOp::Revoke.as_str())
        .bind(&id)
        .bind(now)
        .execute(w.conn())
        .await?;
    }
    Ok(())
}

/// Active grants whose end has passed become expired. (No outbox row: the agent enforces
/// the end in the kernel.)
pub async fn expire_due(w: &mut WriteTx, now: i64) -> Result<()> {
    sqlx::query(&format!(
        "UPDATE grants SET state = $1 WHERE {} AND end_ms <= $4",
        active_in(2)
    ))
    .bind(GrantState::Expired.as_str())
    .bind(PENDING)
    .bind(APPLIED)
    .bind(now)
    .execute(w.conn())
    .await?;
    Ok(())
}

/// Pairs per supersession statement: two parameters each, well under every backend's limit.
const SUPERSEDE_CHUNK: usize = 200;

/// Each `(old, new)`: `old` was superseded by `new`. One statement per
/// [`SUPERSEDE_CHUNK`] pairs, so renewing many grants at once costs a few round trips.
pub async fn supersede(w: &mut WriteTx, pairs: &[(String, String)]) -> Result<()> {
    for chunk in pairs.chunks(SUPERSEDE_CHUNK) {
        // Placeholders in first-appearance order (SQLite numbers them as they appear).
        let cases: String = (0..chunk.len())
            .map(|i| format!(" WHEN ${} THEN ${}", 2 + 2 * i, 3 + 2 * i))
            .collect();
        let ids = (0..chunk.len())
            .map(|i| format!("${}", 2 + 2 * i))
            .collect::<Vec<_>>()
            .join(", ");
        let sql = format!(
            "UPDATE grants SET state = $1, superseded_by = CASE id{cases} END WHERE id IN ({ids})"
        );
        let mut q = sqlx::query(&sql).bind(GrantState::Superseded.as_str());
        for (old, new) in chunk {
            q = q.bind(old.as_str()).bind(new.as_str());
        }
        q.execute(w.conn()).await?;
    }
    Ok(())
}

/// The VM's active grants whose end is after `now`, with their state.
pub async fn active_on_vm(
    ex: impl Executor<'_, Database = Any>,
    vm: &str,
    now: i64,
) -> Result<Vec<(String, GrantState)>> {
    let rows: Vec<(String, String)> = sqlx::query_as(&format!(
        "SELECT id, state FROM grants WHERE vm = $1 AND {} AND end_ms > $4",
        active_in(2)
    ))
    .bind(vm)
    .bind(PENDING)
    .bind(APPLIED)
    .bind(now)
    .fetch_all(ex)
    .await?;
    rows.into_iter()
        .map(|(id, s)| Ok((id, GrantState::try_from(s).map_err(Error::corrupt)?)))
        .collect()
}

/// A grant's state and its request's requestor and justification.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct GrantContext {
    #[sqlx(try_from = "String")]
    pub state: GrantState,
    pub requestor: String,
    pub justification: String,
}

pub async fn context(
    ex: impl Executor<'_, Database = Any>,
    id: &str,
) -> Result<Option<GrantContext>> {
    Ok(sqlx::query_as(
        "SELECT g.state, r.requestor, r.justification FROM grants g \
         JOIN requests r ON r.id = g.request_id WHERE g.id = $1",
    )
    .bind(id)
    .fetch_optional(ex)
    .await?)
}

/// Source prefixes of the VM's active grants on a TCP port.
pub async fn active_tcp_prefixes(
    ex: impl Executor<'_, Database = Any>,
    vm: &str,
    port: u16,
    now: i64,
) -> Result<Vec<String>> {
    let rows: Vec<(String,)> = sqlx::query_as(&format!(
        "SELECT prefix FROM grants WHERE vm = $1 AND port = $2 AND protocol = $3 \
         AND {} AND end_ms > $6",
        active_in(4)
    ))
    .bind(vm)
    .bind(i64::from(port))
    .bind(ProtoSel::Tcp.as_str())
    .bind(PENDING)
    .bind(APPLIED)
    .bind(now)
    .fetch_all(ex)
    .await?;
    Ok(rows.into_iter().map(|r| r.0).collect())
}

/// What a grant is for: requests for the same key supersede each other.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GrantKey {
    pub vm: String,
    pub port: u16,
    pub protocol: Protocol,
    pub prefix: String,
}

/// An active grant found for a key.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, sqlx::FromRow, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ActiveGrant {
    pub id: String,
    pub request_id: String,
    pub port_idx: i64,
    pub vm: String,
    pub port: i64,
    pub protocol: String,
    pub prefix: String,
}

impl ActiveGrant {
    pub fn key(&self) -> Result<GrantKey> {
        let protocol = self
            .protocol
            .parse::<ProtoSel>()
            .ok()
            .and_then(ProtoSel::concrete)
            .ok_or_else(|| Error::Corrupt(format!("grant protocol {:?}", self.protocol)))?;
        Ok(GrantKey {
            vm: self.vm.clone(),
            port: u16::try_from(self.port).map_err(Error::corrupt)?,
            protocol,
            prefix: self.prefix.clone(),
        })
    }
}

const ACTIVE_COLUMNS: &str = "id, request_id, port_idx, vm, port, protocol, prefix";

/// The active grants for these keys whose window has started by `now` (a booked grant is
/// never superseded before its start) (portable: chunks of OR-ed key matches).
pub async fn active_for_keys(
    conn: &mut AnyConnection,
    keys: &[GrantKey],
    now: i64,
) -> Result<Vec<ActiveGrant>> {
    let mut out = Vec::new();
    for chunk in keys.chunks(500) {
        let mut sql = format!(
            "SELECT {ACTIVE_COLUMNS} FROM grants WHERE {} AND start_ms <= $3 AND (",
            active_in(1)
        );
        for i in 0..chunk.len() {
            if i > 0 {
                sql.push_str(" OR ");
            }
            let b = 4 + 4 * i;
            sql.push_str(&format!(
                "(vm = ${b} AND port = ${} AND protocol = ${} AND prefix = ${})",
                b + 1,
                b + 2,
                b + 3
            ));
        }
        sql.push(')');
        let mut q = sqlx::query_as::<_, ActiveGrant>(&sql)
            .bind(PENDING)
            .bind(APPLIED)
            .bind(now);
        for k in chunk {
            q = q
                .bind(k.vm.as_str())
                .bind(i64::from(k.port))
                .bind(ProtoSel::from(k.protocol).as_str())
                .bind(k.prefix.as_str());
        }
        out.extend(q.fetch_all(&mut *conn).await?);
    }
    Ok(out)
}

/// A grant to insert.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewGrant {
    pub id: String,
    pub request_id: String,
    pub port_idx: i64,
    pub key: GrantKey,
    pub start_ms: i64,
    pub end_ms: i64,
    pub on_expiry: OnExpiry,
    pub max_connections: Option<MaxConnections>,
    pub state: GrantState,
    pub superseded_by: Option<String>,
}

pub fn grant_rows(grants: &[NewGrant]) -> Rows {
    let mut t = Rows::new(
        "INSERT INTO grants (id, request_id, port_idx, vm, protocol, port, prefix, start_ms, \
         end_ms, on_expiry, state, superseded_by, max_connections)",
        13,
    );
    for g in grants {
        t.rows.push(vec![
            g.id.as_str().into(),
            g.request_id.as_str().into(),
            g.port_idx.into(),
            g.key.vm.as_str().into(),
            ProtoSel::from(g.key.protocol).as_str().into(),
            i64::from(g.key.port).into(),
            g.key.prefix.as_str().into(),
            g.start_ms.into(),
            g.end_ms.into(),
            g.on_expiry.as_str().into(),
            g.state.as_str().into(),
            g.superseded_by.clone().into(),
            crate::store::requests::limit_column(g.max_connections).into(),
        ]);
    }
    t
}

/// An outbox row to insert.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewOutbox {
    pub seq: i64,
    pub vm: String,
    pub op: OutboxOp,
    pub grant_id: String,
    pub replaces: Vec<String>,
}

pub fn outbox_rows(rows: &[NewOutbox], now: i64) -> Rows {
    let mut t = Rows::new(
        "INSERT INTO grant_outbox (seq, vm, op, grant_id, replaces, created_ms)",
        6,
    );
    for o in rows {
        t.rows.push(vec![
            o.seq.into(),
            o.vm.as_str().into(),
            o.op.as_str().into(),
            o.grant_id.as_str().into(),
            o.replaces.join(",").into(),
            now.into(),
        ]);
    }
    t
}
