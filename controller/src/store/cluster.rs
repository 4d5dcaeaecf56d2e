//! What several controllers on one database share besides the data itself: `agent_presence`
//! (which controller each agent is connected to, until an expiry), the heads that the
//! catch-up behind `NOTIFY` compares (the `counters` rows), and PostgreSQL's notification
//! queue. Written outside the write transactions: presence is not in the activity log and
//! takes no chain lock.

use std::collections::HashMap;

use jitgate_api::{Operation, ResourceType};
use sqlx::{Any, AnyPool, Executor};

use crate::error::{Error, Result};
use crate::store::write::Counter;

/// Rows per presence statement (three parameters each).
const PRESENCE_CHUNK: usize = 5_000;

/// The committed heads: (last activity seq, last outbox seq). A plain read: it waits for no
/// writer (PostgreSQL reads the last committed version of a locked row).
pub async fn heads(ex: impl Executor<'_, Database = Any>) -> Result<(i64, i64)> {
    let rows: Vec<(String, i64)> =
        sqlx::query_as("SELECT name, value FROM counters WHERE name IN ($1, $2)")
            .bind(Counter::Chain.as_str())
            .bind(Counter::Outbox.as_str())
            .fetch_all(ex)
            .await?;
    let (mut chain, mut outbox) = (None, None);
    for (name, value) in rows {
        match Counter::try_from(name).map_err(Error::corrupt)? {
            Counter::Chain => chain = Some(value),
            Counter::Outbox => outbox = Some(value),
            Counter::Request | Counter::Notify => {}
        }
    }
    match (chain, outbox) {
        (Some(c), Some(o)) => Ok((c, o)),
        _ => Err(Error::corrupt("the counters table is incomplete")),
    }
}

/// VMs with outbox rows in `(after, up_to]`.
pub async fn outbox_vms(
    ex: impl Executor<'_, Database = Any>,
    after: i64,
    up_to: i64,
) -> Result<Vec<String>> {
    let rows: Vec<(String,)> =
        sqlx::query_as("SELECT DISTINCT vm FROM grant_outbox WHERE seq > $1 AND seq <= $2")
            .bind(after)
            .bind(up_to)
            .fetch_all(ex)
            .await?;
    Ok(rows.into_iter().map(|r| r.0).collect())
}

/// A change in the activity log that agent connections act on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// A VM's own policy.
    VmPolicy(String),
    /// A resource group's policy.
    GroupPolicy(String),
    /// A VM's agents were revoked or replaced (enrolment revokes the previous agent).
    Agents(String),
}

/// Policy and agent changes logged in `(after, up_to]`.
pub async fn changes(
    ex: impl Executor<'_, Database = Any>,
    after: i64,
    up_to: i64,
) -> Result<Vec<Change>> {
    let rows: Vec<(String, String, String, String)> = sqlx::query_as(
        "SELECT operation, resource_type, resource_group, vm FROM activity \
         WHERE seq > $1 AND seq <= $2 AND operation IN ($3, $4, $5, $6)",
    )
    .bind(after)
    .bind(up_to)
    .bind(Operation::UpdatePolicy.as_str())
    .bind(Operation::DeletePolicy.as_str())
    .bind(Operation::RevokeAgent.as_str())
    .bind(Operation::EnrollAgent.as_str())
    .fetch_all(ex)
    .await?;
    let mut out = Vec::with_capacity(rows.len());
    for (op, kind, group, vm) in rows {
        let op = Operation::try_from(op).map_err(Error::corrupt)?;
        if matches!(op, Operation::RevokeAgent | Operation::EnrollAgent) {
            out.push(Change::Agents(vm));
            continue;
        }
        match ResourceType::try_from(kind).map_err(Error::corrupt)? {
            ResourceType::VirtualMachine => out.push(Change::VmPolicy(vm)),
            ResourceType::ResourceGroup => out.push(Change::GroupPolicy(group)),
            _ => {}
        }
    }
    Ok(out)
}

/// How stale a connected agent's last seen may grow before a presence refresh moves it: an
/// agent's status reports (every 10 s) move it as well, and while it is connected it shows
/// online whatever its last seen says. Rewriting every connected agent's row every refresh
/// was most of PostgreSQL's idle work at 10 000 agents.
pub const SEEN_REFRESH_MS: i64 = 30_000;

/// Records `renew` as connected to `controller` until `expires_ms`, marks them seen now when
/// their last seen is older than [`SEEN_REFRESH_MS`] (`agents.last_seen_ms`: no write per
/// pong), drops this controller's rows of the agents in `gone` (disconnected since), and
/// anyone's rows long expired (a controller that died). One statement per
/// [`PRESENCE_CHUNK`] agents, plus two.
pub async fn refresh_presence(
    pool: &AnyPool,
    controller: &str,
    renew: &[String],
    gone: &[String],
    now_ms: i64,
    expires_ms: i64,
) -> Result<()> {
    for chunk in renew.chunks(PRESENCE_CHUNK) {
        let mut sql =
            String::from("INSERT INTO agent_presence (agent_id, controller, expires_ms) VALUES ");
        for i in 0..chunk.len() {
            if i > 0 {
                sql.push(',');
            }
            sql.push_str(&format!("(${}, $1, $2)", i + 3));
        }
        sql.push_str(
            " ON CONFLICT (agent_id) DO UPDATE SET controller = excluded.controller, \
             expires_ms = excluded.expires_ms",
        );
        let mut q = sqlx::query(&sql).bind(controller).bind(expires_ms);
        for a in chunk {
            q = q.bind(a.as_str());
        }
        q.execute(pool).await?;
    }
    if !renew.is_empty() {
        sqlx::query(
            "UPDATE agents SET last_seen_ms = $1 WHERE id IN \
             (SELECT agent_id FROM agent_presence WHERE controller = $2 AND expires_ms = $3) \
             AND (last_seen_ms IS NULL OR last_seen_ms < $4)",
        )
        .bind(now_ms)
        .bind(controller)
        .bind(expires_ms)
        .bind(now_ms.saturating_sub(SEEN_REFRESH_MS))
        .execute(pool)
        .await?;
    }
    for chunk in gone.chunks(PRESENCE_CHUNK) {
        let ids: Vec<String> = (0..chunk.len()).map(|i| format!("${}", i + 2)).collect();
        let sql = format!(
            "DELETE FROM agent_presence WHERE controller = $1 AND agent_id IN ({})",
            ids.join(", ")
        );
        let mut q = sqlx::query(&sql).bind(controller);
        for a in chunk {
            q = q.bind(a.as_str());
        }
        q.execute(pool).await?;
    }
    sqlx::query("DELETE FROM agent_presence WHERE expires_ms < $1")
        .bind(now_ms)
        .execute(pool)
        .await?;
    Ok(())
}

/// Agents connected to some controller, with their presence expiry.
pub async fn present(
    ex: impl Executor<'_, Database = Any>,
    now_ms: i64,
) -> Result<HashMap<String, i64>> {
    let rows: Vec<(String, i64)> =
        sqlx::query_as("SELECT agent_id, expires_ms FROM agent_presence WHERE expires_ms > $1")
            .bind(now_ms)
            .fetch_all(ex)
            .await?;
    Ok(rows.into_iter().collect())
}

/// This controller's presence rows are gone (it stops).
pub async fn clear_presence(pool: &AnyPool, controller: &str) -> Result<()> {
    sqlx::query("DELETE FROM agent_presence WHERE controller = $1")
        .bind(controller)
        .execute(pool)
        .await?;
    Ok(())
}

/// PostgreSQL's `pg_notification_queue_usage()`: the fraction (0 to 1) of the notification
/// queue in use. Near 1, a listener has stalled and notifying commits will fail.
pub async fn notification_queue_usage(ex: impl Executor<'_, Database = Any>) -> Result<f64> {
    let (u,): (f64,) = sqlx::query_as("SELECT pg_notification_queue_usage()")
        .fetch_one(ex)
        .await?;
    Ok(u)
}
