//! What `jit-controller prune` reads and deletes: one short step at a time, each in its own
//! write transaction (the counters locks, as every write), so that requests and the leader's
//! work wait for one batch at most.
//!
//! Each `*_batch` finds the next keys past their retention after a cursor (keyset, so rows
//! kept because they are still needed are not read again) and, unless `delete` is false (a
//! dry run), deletes them with what depends on them.

use sqlx::{Any, Executor};

use crate::error::Result;
use crate::store::WriteTx;
use crate::store::backend::placeholders;
use crate::store::grants::GrantState;
use jitgate_api::PortStatus;
use jitgate_proto::audit_kind::AuditKind;

/// Requests per step (each with its ports, grants, approvals and delivered outbox rows).
pub const REQUEST_BATCH: i64 = 200;
/// Agent audit records, sessions, activity entries per step.
pub const ROW_BATCH: i64 = 1000;
/// Compliance evaluations per step (each with one result per VM and unmanaged host).
pub const SCAN_BATCH: i64 = 5;

/// Requests whose seq a step looks at (read outside the write transaction).
pub const REQUEST_WINDOW: i64 = 5000;

/// What makes request `r` prunable: it started before `$1`, every port ended (Denied or
/// Revoked) before `$1`, no grant is pending or applied or ends later, and no grant message
/// is still queued for an agent.
const PRUNABLE: &str = "r.start_ms < $1 \
     AND NOT EXISTS (SELECT 1 FROM request_ports p WHERE p.request_id = r.id \
       AND (p.end_ms >= $1 OR p.status NOT IN ($2, $3))) \
     AND NOT EXISTS (SELECT 1 FROM grants g WHERE g.request_id = r.id \
       AND (g.end_ms >= $1 OR g.state IN ($4, $5))) \
     AND NOT EXISTS (SELECT 1 FROM grants g JOIN grant_outbox o ON o.grant_id = g.id \
       WHERE g.request_id = r.id AND o.delivered_ms IS NULL)";

fn bind_prunable<'q>(
    q: sqlx::query::QueryAs<'q, Any, (String,), sqlx::any::AnyArguments<'q>>,
    before: i64,
) -> sqlx::query::QueryAs<'q, Any, (String,), sqlx::any::AnyArguments<'q>> {
    q.bind(before)
        .bind(PortStatus::Denied.as_str())
        .bind(PortStatus::Revoked.as_str())
        .bind(GrantState::Pending.as_str())
        .bind(GrantState::Applied.as_str())
}

/// The highest seq of a request that started before `before` (where the windows end).
pub async fn requests_end(ex: impl Executor<'_, Database = Any>, before: i64) -> Result<i64> {
    let (hi,): (Option<i64>,) = sqlx::query_as("SELECT MAX(seq) FROM requests WHERE start_ms < $1")
        .bind(before)
        .fetch_one(ex)
        .await?;
    Ok(hi.unwrap_or(0))
}

/// The prunable requests with seq in `lo..hi` (a read; nothing is locked).
pub async fn request_candidates(
    ex: impl Executor<'_, Database = Any>,
    before: i64,
    lo: i64,
    hi: i64,
) -> Result<Vec<String>> {
    let sql = format!(
        "SELECT r.id FROM requests r WHERE r.seq >= $6 AND r.seq < $7 AND {PRUNABLE} \
         ORDER BY r.seq"
    );
    let rows = bind_prunable(sqlx::query_as(&sql), before)
        .bind(lo)
        .bind(hi)
        .fetch_all(ex)
        .await?;
    Ok(rows.into_iter().map(|r| r.0).collect())
}

/// Deletes those of `ids` (at most [`REQUEST_BATCH`]) that are still prunable, checked again
/// in this transaction, with their ports, grants, approvals and delivered grant messages.
/// Returns how many requests went.
pub async fn delete_requests(w: &mut WriteTx, before: i64, ids: &[String]) -> Result<u64> {
    if ids.is_empty() {
        return Ok(0);
    }
    let sql = format!(
        "SELECT r.id FROM requests r WHERE r.id IN ({}) AND {PRUNABLE}",
        placeholders(6, ids.len())
    );
    let mut q = bind_prunable(sqlx::query_as(&sql), before);
    for id in ids {
        q = q.bind(id);
    }
    let rows: Vec<(String,)> = q.fetch_all(w.conn()).await?;
    if rows.is_empty() {
        return Ok(0);
    }
    let list = placeholders(1, rows.len());
    let statements = [
        format!(
            "DELETE FROM grant_outbox WHERE grant_id IN \
             (SELECT id FROM grants WHERE request_id IN ({list}))"
        ),
        format!("DELETE FROM request_approvals WHERE request_id IN ({list})"),
        format!("DELETE FROM grants WHERE request_id IN ({list})"),
        format!("DELETE FROM request_ports WHERE request_id IN ({list})"),
        format!("DELETE FROM requests WHERE id IN ({list})"),
    ];
    for sql in &statements {
        let mut q = sqlx::query(sql);
        for (id,) in &rows {
            q = q.bind(id);
        }
        q.execute(w.conn()).await?;
    }
    Ok(rows.len() as u64)
}

/// The agents with stored audit records.
pub async fn audit_agents(ex: impl Executor<'_, Database = Any>) -> Result<Vec<String>> {
    let rows: Vec<(String,)> =
        sqlx::query_as("SELECT DISTINCT agent_id FROM agent_audit ORDER BY agent_id")
            .fetch_all(ex)
            .await?;
    Ok(rows.into_iter().map(|r| r.0).collect())
}

/// The agent's records that may go: its records form one hash chain, so only a prefix goes
/// (what remains verifies from its first record on), the records before the first one still
/// within its retention (connection records: `conn_before`, the others: `other_before`,
/// by the time the controller received them); the newest record always stays. Returns the
/// range (first, last seq), None if nothing goes.
pub async fn audit_prefix(
    ex: &mut sqlx::AnyConnection,
    agent: &str,
    conn_before: i64,
    other_before: i64,
) -> Result<Option<(i64, i64)>> {
    let (first, newest): (Option<i64>, Option<i64>) =
        sqlx::query_as("SELECT MIN(seq), MAX(seq) FROM agent_audit WHERE agent_id = $1")
            .bind(agent)
            .fetch_one(&mut *ex)
            .await?;
    let (Some(first), Some(newest)) = (first, newest) else {
        return Ok(None);
    };
    let (young,): (Option<i64>,) = sqlx::query_as(
        "SELECT MIN(seq) FROM agent_audit WHERE agent_id = $1 AND \
         ((kind IN ($2, $3) AND received_ms >= $4) \
          OR ((kind IS NULL OR kind NOT IN ($2, $3)) AND received_ms >= $5))",
    )
    .bind(agent)
    .bind(AuditKind::ConnectionAdmitted.as_str())
    .bind(AuditKind::ConnectionDenied.as_str())
    .bind(conn_before)
    .bind(other_before)
    .fetch_one(&mut *ex)
    .await?;
    let last = young.map_or(newest - 1, |y| y - 1).min(newest - 1);
    Ok((last >= first).then_some((first, last)))
}

/// Of the agent's records first..=last: (connection records, others).
pub async fn audit_counts(
    ex: impl Executor<'_, Database = Any>,
    agent: &str,
    first: i64,
    last: i64,
) -> Result<(u64, u64)> {
    let (conn, all): (i64, i64) = sqlx::query_as(
        "SELECT COALESCE(SUM(CASE WHEN kind IN ($4, $5) THEN 1 ELSE 0 END), 0), COUNT(*) \
         FROM agent_audit WHERE agent_id = $1 AND seq >= $2 AND seq <= $3",
    )
    .bind(agent)
    .bind(first)
    .bind(last)
    .bind(AuditKind::ConnectionAdmitted.as_str())
    .bind(AuditKind::ConnectionDenied.as_str())
    .fetch_one(ex)
    .await?;
    Ok((conn as u64, (all - conn) as u64))
}

/// Deletes the agent's records first..=last.
pub async fn delete_audit(w: &mut WriteTx, agent: &str, first: i64, last: i64) -> Result<u64> {
    Ok(
        sqlx::query("DELETE FROM agent_audit WHERE agent_id = $1 AND seq >= $2 AND seq <= $3")
            .bind(agent)
            .bind(first)
            .bind(last)
            .execute(w.conn())
            .await?
            .rows_affected(),
    )
}

/// The next compliance evaluations after id `after` made before `before` (never the newest:
/// the current compliance state is read from it), with their results. Returns the
/// evaluations, their results and the cursor.
pub async fn compliance_batch(
    w: &mut WriteTx,
    before: i64,
    after: i64,
    delete: bool,
) -> Result<(u64, u64, Option<i64>)> {
    let ids: Vec<(i64,)> = sqlx::query_as(
        "SELECT id FROM compliance_scans WHERE id > $1 AND time_ms < $2 \
         AND id < (SELECT MAX(id) FROM compliance_scans) ORDER BY id LIMIT $3",
    )
    .bind(after)
    .bind(before)
    .bind(SCAN_BATCH)
    .fetch_all(w.conn())
    .await?;
    let (Some((first,)), Some((last,))) = (ids.first().copied(), ids.last().copied()) else {
        return Ok((0, 0, None));
    };
    let results = if delete {
        let r = sqlx::query("DELETE FROM compliance_results WHERE scan_id >= $1 AND scan_id <= $2")
            .bind(first)
            .bind(last)
            .execute(w.conn())
            .await?
            .rows_affected();
        sqlx::query("DELETE FROM compliance_counts WHERE scan_id >= $1 AND scan_id <= $2")
            .bind(first)
            .bind(last)
            .execute(w.conn())
            .await?;
        sqlx::query("DELETE FROM compliance_scans WHERE id >= $1 AND id <= $2")
            .bind(first)
            .bind(last)
            .execute(w.conn())
            .await?;
        r
    } else {
        let (n,): (i64,) = sqlx::query_as(
            "SELECT COUNT(*) FROM compliance_results WHERE scan_id >= $1 AND scan_id <= $2",
        )
        .bind(first)
        .bind(last)
        .fetch_one(w.conn())
        .await?;
        n as u64
    };
    Ok((ids.len() as u64, results, Some(last)))
}

/// Delivered notifications a prune with cutoff `before` removes: (deliveries, events).
pub async fn notify_counts(ex: &mut sqlx::AnyConnection, before: i64) -> Result<(u64, u64)> {
    let (d,): (i64,) = sqlx::query_as(
        "SELECT COUNT(*) FROM notify_deliveries WHERE state = 'delivered' AND delivered_at < $1",
    )
    .bind(before)
    .fetch_one(&mut *ex)
    .await?;
    let (e,): (i64,) = sqlx::query_as(
        "SELECT COUNT(*) FROM notify_events e WHERE e.seq <= \
         (SELECT value FROM counters WHERE name = $2) AND e.created_at < $1 \
         AND NOT EXISTS (SELECT 1 FROM notify_deliveries d WHERE d.event_seq = e.seq \
           AND NOT (d.state = 'delivered' AND d.delivered_at < $1))",
    )
    .bind(before)
    .bind(crate::store::notify::FANNED)
    .fetch_one(&mut *ex)
    .await?;
    Ok((d as u64, e as u64))
}

/// The next sessions (by id, after `after`) that ended or expired before `before`.
pub async fn sessions_batch(
    w: &mut WriteTx,
    before: i64,
    after: &str,
    delete: bool,
) -> Result<(u64, Option<String>)> {
    let ids: Vec<(String,)> = sqlx::query_as(
        "SELECT id FROM sessions WHERE id > $1 AND \
         ((ended_ms IS NOT NULL AND ended_ms < $2) OR expires_ms < $2) ORDER BY id LIMIT $3",
    )
    .bind(after)
    .bind(before)
    .bind(ROW_BATCH)
    .fetch_all(w.conn())
    .await?;
    let Some((last,)) = ids.last().cloned() else {
        return Ok((0, None));
    };
    if delete {
        let sql = format!(
            "DELETE FROM sessions WHERE id IN ({})",
            placeholders(1, ids.len())
        );
        let mut q = sqlx::query(&sql);
        for (id,) in &ids {
            q = q.bind(id);
        }
        q.execute(w.conn()).await?;
    }
    Ok((ids.len() as u64, Some(last)))
}

/// The activity log's prunable end: the newest checkpoint (seq, hash) by `key_id` above
/// `above` (the anchor) whose entries are all older than `before`.
pub async fn activity_cut(
    ex: &mut sqlx::AnyConnection,
    key_id: &str,
    above: i64,
    before: i64,
) -> Result<Option<(i64, String)>> {
    let (young,): (Option<i64>,) =
        sqlx::query_as("SELECT MIN(seq) FROM activity WHERE time_ms >= $1")
            .bind(before)
            .fetch_one(&mut *ex)
            .await?;
    let (head,): (Option<i64>,) = sqlx::query_as("SELECT MAX(seq) FROM activity")
        .fetch_one(&mut *ex)
        .await?;
    let limit = young.map_or(head.unwrap_or(0), |y| y - 1);
    Ok(sqlx::query_as(
        "SELECT seq, hash FROM activity_checkpoints WHERE key_id = $1 AND seq > $2 \
         AND seq <= $3 ORDER BY seq DESC LIMIT 1",
    )
    .bind(key_id)
    .bind(above)
    .bind(limit)
    .fetch_optional(&mut *ex)
    .await?)
}

/// Deletes activity entries first..=last (one step; the anchor is already set).
pub async fn delete_activity(w: &mut WriteTx, first: i64, last: i64) -> Result<u64> {
    Ok(
        sqlx::query("DELETE FROM activity WHERE seq >= $1 AND seq <= $2")
            .bind(first)
            .bind(last)
            .execute(w.conn())
            .await?
            .rows_affected(),
    )
}

/// Deletes the checkpoints below the anchor `seq` (the anchor's own stay).
pub async fn delete_checkpoints_below(w: &mut WriteTx, seq: i64) -> Result<u64> {
    Ok(
        sqlx::query("DELETE FROM activity_checkpoints WHERE seq < $1")
            .bind(seq)
            .execute(w.conn())
            .await?
            .rows_affected(),
    )
}
