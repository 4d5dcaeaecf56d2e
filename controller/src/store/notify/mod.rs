//! The notification tables (`notify_sinks`, `notify_events`, `notify_deliveries`;
//! docs/notifications.md): events written with their state change, their fan-out to sinks,
//! the leased claim of due deliveries, the recorded outcome, and pruning.
//!
//! The delivery worker records outcomes, fans out and claims in one write transaction per
//! round (one commit, one fsync): on PostgreSQL the counters lock serialises the rounds of
//! several controllers, and the repeated lease condition makes each claim atomic per row,
//! so a delivery is attempted by one controller at a time.

use jitgate_notify::{DeliveryState, Event};
use sqlx::AnyConnection;

use crate::error::{Error, Result};
use crate::store::backend::{self, Param, Rows};
use crate::store::db::Db;
use crate::store::write::{Counter, WriteTx};

mod lease;
pub use lease::{
    Attempted, Claimed, Ended, RECLAIM, claim, claim_sql, reclaim, record_all, release,
    work_waiting, work_waiting_sql,
};

/// Who wrote the sinks taken from controller.toml (`created_by`).
pub const CONFIG_SINK_OWNER: &str = "controller.toml";

/// The event rows of a transaction, numbered from the `notify` counter (commit order), for
/// [`WriteTx::commit_with`]: inserted in the commit's own round trip.
pub fn event_rows(w: &mut WriteTx, events: &[Event]) -> Result<Rows> {
    let mut rows = Rows::new(
        "INSERT INTO notify_events (seq, id, event_type, order_key, body, people, created_at)",
        7,
    );
    for e in events {
        let seq = w.next(Counter::Notify);
        rows.rows.push(vec![
            Param::Int(seq),
            Param::Text(e.id.to_string()),
            Param::Text(e.event_type().as_str().into()),
            Param::Text(e.order_key()),
            Param::Text(serde_json::to_string(e)?),
            // Addresses are looked up at delivery, for email sinks (`outbox::worker`).
            Param::Text("[]".into()),
            Param::Int(w.now),
        ]);
    }
    Ok(rows)
}

/// Inserts `events` now, inside the transaction (paths whose commit has no rows of its own).
pub async fn insert_events(w: &mut WriteTx, events: &[Event]) -> Result<()> {
    if events.is_empty() {
        return Ok(());
    }
    let rows = event_rows(w, events)?;
    let backend = w.backend();
    backend::insert(w.conn(), backend, rows).await
}

/// A stored sink: its name, `SinkSpec` JSON and who made it.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct SinkRow {
    pub name: String,
    pub spec: String,
    pub created_by: String,
    pub updated_at: i64,
}

/// Every sink.
pub async fn sinks(conn: &mut AnyConnection) -> Result<Vec<SinkRow>> {
    Ok(
        sqlx::query_as("SELECT name, spec, created_by, updated_at FROM notify_sinks ORDER BY name")
            .fetch_all(conn)
            .await?,
    )
}

/// Every sink's name and last change (the worker re-reads a spec only when it changed).
pub async fn sink_versions(conn: &mut AnyConnection) -> Result<Vec<(String, i64)>> {
    Ok(
        sqlx::query_as("SELECT name, updated_at FROM notify_sinks ORDER BY name")
            .fetch_all(conn)
            .await?,
    )
}

/// One sink.
pub async fn sink(conn: &mut AnyConnection, name: &str) -> Result<Option<SinkRow>> {
    Ok(sqlx::query_as(
        "SELECT name, spec, created_by, updated_at FROM notify_sinks WHERE name = $1",
    )
    .bind(name)
    .fetch_optional(conn)
    .await?)
}

/// Stores `name` (insert or replace its spec).
pub async fn put_sink(w: &mut WriteTx, name: &str, spec: &str, created_by: &str) -> Result<()> {
    let now = w.now;
    sqlx::query(
        "INSERT INTO notify_sinks (name, spec, created_by, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $4) ON CONFLICT (name) DO UPDATE SET spec = $2, \
         created_by = $3, updated_at = $4",
    )
    .bind(name)
    .bind(spec)
    .bind(created_by)
    .bind(now)
    .execute(w.conn())
    .await?;
    Ok(())
}

/// Removes `name` and its deliveries.
pub async fn remove_sink(w: &mut WriteTx, name: &str) -> Result<()> {
    sqlx::query("DELETE FROM notify_deliveries WHERE sink = $1")
        .bind(name)
        .execute(w.conn())
        .await?;
    sqlx::query("DELETE FROM notify_sinks WHERE name = $1")
        .bind(name)
        .execute(w.conn())
        .await?;
    Ok(())
}

/// An event not yet fanned out.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct Unfanned {
    pub seq: i64,
    pub order_key: String,
    pub body: String,
}

/// The `counters` row holding the seq up to which events are fanned out (migration 36):
/// the fan-out takes events in seq order (commit order) under the counters lock, so the
/// events fanned out are always those up to a seq, and marking a batch writes this one row
/// instead of every event row of the batch.
pub const FANNED: &str = "notify_fanned";

/// The seq up to which events are fanned out.
pub async fn fanned_upto(conn: &mut AnyConnection) -> Result<i64> {
    let (v,): (i64,) = sqlx::query_as("SELECT value FROM counters WHERE name = $1")
        .bind(FANNED)
        .fetch_one(conn)
        .await?;
    Ok(v)
}

/// The statement of [`unfanned`] (its parameters: the fan-out mark, the limit): a range of
/// the events' primary key.
pub const UNFANNED: &str =
    "SELECT seq, order_key, body FROM notify_events WHERE seq > $1 ORDER BY seq LIMIT $2";

/// Up to `limit` events not yet fanned out, in commit order.
pub async fn unfanned(w: &mut WriteTx, limit: i64) -> Result<Vec<Unfanned>> {
    let after = fanned_upto(w.conn()).await?;
    Ok(sqlx::query_as(UNFANNED)
        .bind(after)
        .bind(limit)
        .fetch_all(w.conn())
        .await?)
}

/// One delivery written at fan-out: queued, or already claimed for its first attempt.
#[derive(Clone, Debug)]
pub struct Fanned {
    pub event_seq: i64,
    pub sink: String,
    pub order_key: String,
    /// Written as [`claim`] leaves a row (leased to the fan-out's owner, attempts 1), so the
    /// delivery costs no separate claim: its sink had room, and no earlier delivery of the
    /// same order key to it is pending.
    pub claimed: bool,
}

/// The deliveries `to` (queued, or claimed by `owner` until `lease_until`), and the events
/// up to `upto` marked fanned out (the caller read every unfanned event up to it, under the
/// counters lock: one counter moved, no event row written). Returns the claims written, in
/// `to`'s order.
pub async fn fan_out(
    w: &mut WriteTx,
    to: Vec<Fanned>,
    upto: i64,
    owner: &str,
    lease_until: i64,
) -> Result<Vec<(String, Claimed)>> {
    let mut rows = Rows::new(
        "INSERT INTO notify_deliveries (event_seq, sink, order_key, state, attempts, \
         next_attempt_at, first_attempt_at, last_attempt_at, lease_owner, lease_until)",
        10,
    );
    let now = w.now;
    let mut claims = Vec::new();
    for f in to {
        let (attempts, at, lease_owner, until) = if f.claimed {
            claims.push((
                f.sink.clone(),
                Claimed {
                    event_seq: f.event_seq,
                    attempts: 1,
                    first_attempt_at: now,
                    lease_until,
                },
            ));
            (
                1,
                Param::Int(now),
                Param::Text(owner.to_string()),
                Param::Int(lease_until),
            )
        } else {
            (0, Param::Null, Param::Null, Param::Null)
        };
        rows.rows.push(vec![
            Param::Int(f.event_seq),
            Param::Text(f.sink),
            Param::Text(f.order_key),
            Param::Text(DeliveryState::Queued.as_str().into()),
            Param::Int(attempts),
            Param::Int(now),
            at.clone(),
            at,
            lease_owner,
            until,
        ]);
    }
    let backend = w.backend();
    backend::insert(w.conn(), backend, rows).await?;
    sqlx::query("UPDATE counters SET value = $1 WHERE name = $2 AND value < $1")
        .bind(upto)
        .bind(FANNED)
        .execute(w.conn())
        .await?;
    Ok(claims)
}

/// Most order keys looked up by one [`pending_keys`] statement.
const KEYS_CHUNK: usize = 500;

/// The order keys among `keys` with a pending (queued or retrying) delivery to `sink`: a
/// new event of one of them waits for it (per-request order), so it is not claimed at
/// fan-out. Lookups in the `(sink, order_key, event_seq)` index.
pub async fn pending_keys(
    w: &mut WriteTx,
    sink: &str,
    keys: &[&str],
) -> Result<std::collections::HashSet<String>> {
    let mut out = std::collections::HashSet::new();
    for chunk in keys.chunks(KEYS_CHUNK) {
        let marks: Vec<String> = (0..chunk.len()).map(|k| format!("${}", k + 2)).collect();
        let sql = format!(
            "SELECT DISTINCT order_key FROM notify_deliveries WHERE sink = $1 \
             AND order_key IN ({}) AND state IN {PENDING}",
            marks.join(", ")
        );
        let mut q = sqlx::query_as::<_, (String,)>(&sql).bind(sink);
        for k in chunk {
            q = q.bind(*k);
        }
        out.extend(q.fetch_all(w.conn()).await?.into_iter().map(|(k,)| k));
    }
    Ok(out)
}

/// The pending states (queued, retrying) as SQL literals: a partial index
/// (`notify_deliveries_claim`, migration 34) serves only queries that name its condition's
/// values in their text (neither SQLite nor a generic PostgreSQL plan matches it against
/// bound parameters). The values are the crate's constants, never input.
const PENDING: &str = "('queued', 'retrying')";

/// Stored events by seq: (seq, JSON); a seq gone (pruned) is absent.
pub async fn events(conn: &mut AnyConnection, seqs: &[i64]) -> Result<Vec<(i64, String)>> {
    if seqs.is_empty() {
        return Ok(Vec::new());
    }
    let marks: Vec<String> = (1..=seqs.len()).map(|i| format!("${i}")).collect();
    let sql = format!(
        "SELECT seq, body FROM notify_events WHERE seq IN ({})",
        marks.join(", ")
    );
    let mut q = sqlx::query_as(&sql);
    for s in seqs {
        q = q.bind(*s);
    }
    Ok(q.fetch_all(conn).await?)
}

/// Adds `n` deliveries just recorded to `sink`'s kept delivered count, and moves its last
/// success forward to `latest` (the latest of their times). The prune takes the count back
/// ([`take_delivered`]) but leaves the last success: it stays known after the deliveries
/// themselves are gone.
async fn add_delivered(w: &mut WriteTx, sink: &str, n: i64, latest: i64) -> Result<()> {
    if n <= 0 {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO notify_delivered (sink, delivered, last_delivered_at) VALUES ($1, $2, $3) \
         ON CONFLICT (sink) DO UPDATE SET delivered = notify_delivered.delivered + $2, \
         last_delivered_at = CASE WHEN notify_delivered.last_delivered_at IS NULL \
         OR notify_delivered.last_delivered_at < $3 THEN $3 \
         ELSE notify_delivered.last_delivered_at END",
    )
    .bind(sink)
    .bind(n)
    .bind(latest)
    .execute(w.conn())
    .await?;
    Ok(())
}

/// Takes `n` pruned deliveries off `sink`'s kept delivered count (never below zero: rows
/// written around this code, by hand or by an older version, cannot make it negative).
async fn take_delivered(w: &mut WriteTx, sink: &str, n: i64) -> Result<()> {
    if n <= 0 {
        return Ok(());
    }
    sqlx::query(
        "UPDATE notify_delivered SET delivered = CASE WHEN delivered - $2 > 0 \
         THEN delivered - $2 ELSE 0 END WHERE sink = $1",
    )
    .bind(sink)
    .bind(n)
    .execute(w.conn())
    .await?;
    Ok(())
}

/// Events one prune transaction looks at.
pub const PRUNE_BATCH: i64 = 1000;

/// Prunes every delivered row older than `before`, one [`prune_batch`] per write transaction
/// (requests wait for one batch at most, never for the whole prune). Returns the deliveries
/// and events deleted.
pub async fn prune_all(db: &Db, before: i64) -> Result<(u64, u64)> {
    let (mut d, mut e, mut after) = (0, 0, 0);
    loop {
        let mut w = db.begin().await?;
        let (dd, ee, next) = prune_batch(&mut w, before, after, PRUNE_BATCH).await?;
        w.commit().await?;
        (d, e) = (d + dd, e + ee);
        match next {
            Some(seq) => after = seq,
            None => return Ok((d, e)),
        }
        tokio::task::yield_now().await;
    }
}

/// One short step of the prune, oldest events first: among the next `batch` fanned-out
/// events after seq `after` (a range of the events' primary key, up to the fan-out mark),
/// those created before `before` lose their deliveries delivered before `before` (a range
/// of the deliveries' primary key), and go when no delivery is left (one still retrying,
/// or dead, keeps its event). Seq is commit order, so `created_at` grows with it: the step
/// stops at the first younger event instead of reading every event there is, as one
/// `DELETE ... WHERE created_at < ?` would (seconds under the write lock on a large
/// database). Returns the deliveries and events
/// deleted, and the seq to continue after when the whole batch was old.
pub async fn prune_batch(
    w: &mut WriteTx,
    before: i64,
    after: i64,
    batch: i64,
) -> Result<(u64, u64, Option<i64>)> {
    let upto = fanned_upto(w.conn()).await?;
    let rows: Vec<(i64, i64)> = sqlx::query_as(
        "SELECT seq, created_at FROM notify_events WHERE seq > $1 AND seq <= $2 \
         ORDER BY seq LIMIT $3",
    )
    .bind(after)
    .bind(upto)
    .bind(batch)
    .fetch_all(w.conn())
    .await?;
    let old = rows.iter().take_while(|(_, at)| *at < before).count();
    let (Some((first, _)), Some((last, _))) =
        (rows.first(), old.checked_sub(1).and_then(|i| rows.get(i)))
    else {
        return Ok((0, 0, None));
    };
    let gone: Vec<(String, i64)> = sqlx::query_as(
        "SELECT sink, COUNT(*) FROM notify_deliveries WHERE event_seq BETWEEN $1 AND $2 \
         AND state = $3 AND delivered_at < $4 GROUP BY sink",
    )
    .bind(first)
    .bind(last)
    .bind(DeliveryState::Delivered.as_str())
    .bind(before)
    .fetch_all(w.conn())
    .await?;
    for (sink, n) in &gone {
        take_delivered(w, sink, *n).await?;
    }
    let d = sqlx::query(
        "DELETE FROM notify_deliveries WHERE event_seq BETWEEN $1 AND $2 AND state = $3 \
         AND delivered_at < $4",
    )
    .bind(first)
    .bind(last)
    .bind(DeliveryState::Delivered.as_str())
    .bind(before)
    .execute(w.conn())
    .await?
    .rows_affected();
    let e = sqlx::query(
        "DELETE FROM notify_events WHERE seq BETWEEN $1 AND $2 \
         AND created_at < $3 AND NOT EXISTS \
         (SELECT 1 FROM notify_deliveries d WHERE d.event_seq = notify_events.seq)",
    )
    .bind(first)
    .bind(last)
    .bind(before)
    .execute(w.conn())
    .await?
    .rows_affected();
    let whole = old == rows.len() && i64::try_from(rows.len()).is_ok_and(|n| n == batch);
    Ok((d, e, whole.then_some(*last)))
}

/// How many deliveries each sink has in each state: the pending and dead ones counted
/// from the index `(state, sink, event_seq)` alone (never the table: a sink's backlog may
/// be large), the delivered ones read from their kept count (`notify_delivered`: one row
/// per sink, however many deliveries are kept).
pub async fn counts(conn: &mut AnyConnection) -> Result<Vec<(String, DeliveryState, i64)>> {
    let mut rows: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT sink, state, COUNT(*) FROM notify_deliveries \
         WHERE state IN ($1, $2, $3) GROUP BY sink, state",
    )
    .bind(DeliveryState::Queued.as_str())
    .bind(DeliveryState::Retrying.as_str())
    .bind(DeliveryState::Dead.as_str())
    .fetch_all(&mut *conn)
    .await?;
    let delivered: Vec<(String, i64)> =
        sqlx::query_as("SELECT sink, delivered FROM notify_delivered WHERE delivered > 0")
            .fetch_all(&mut *conn)
            .await?;
    rows.extend(
        delivered
            .into_iter()
            .map(|(sink, n)| (sink, DeliveryState::Delivered.as_str().to_string(), n)),
    );
    rows.sort();
    let mut out = Vec::with_capacity(rows.len());
    for (sink, state, n) in rows {
        let state: DeliveryState = state
            .parse()
            .map_err(|e| Error::Corrupt(format!("notify_deliveries.state: {e}")))?;
        out.push((sink, state, n));
    }
    Ok(out)
}

/// Dead deliveries (of `sink`, or of every sink) back to `retrying`, due now, with a fresh
/// give-up window. Returns how many.
pub async fn retry_dead(w: &mut WriteTx, sink: Option<&str>) -> Result<u64> {
    let now = w.now;
    let q = match sink {
        Some(_) => {
            "UPDATE notify_deliveries SET state = $1, attempts = 0, first_attempt_at = NULL, \
             next_attempt_at = $2 WHERE state = $3 AND sink = $4"
        }
        None => {
            "UPDATE notify_deliveries SET state = $1, attempts = 0, first_attempt_at = NULL, \
             next_attempt_at = $2 WHERE state = $3"
        }
    };
    let mut q = sqlx::query(q)
        .bind(DeliveryState::Retrying.as_str())
        .bind(now)
        .bind(DeliveryState::Dead.as_str());
    if let Some(s) = sink {
        q = q.bind(s);
    }
    Ok(q.execute(w.conn()).await?.rows_affected())
}

/// A sink's last failure still standing (on a delivery retrying or dead).
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct LastFailure {
    /// `FailureKind::as_str`.
    pub kind: String,
    /// `StatusClass::as_str`, when there was an answer.
    pub status: Option<String>,
    pub detail: Option<String>,
    pub at: i64,
}

/// The latest failure of `sink`'s retrying or dead deliveries.
pub async fn last_failure(conn: &mut AnyConnection, sink: &str) -> Result<Option<LastFailure>> {
    Ok(sqlx::query_as(
        "SELECT last_kind AS kind, last_status AS status, last_detail AS detail, \
         last_attempt_at AS at FROM notify_deliveries WHERE sink = $1 AND state IN ($2, $3) \
         AND last_kind IS NOT NULL AND last_attempt_at IS NOT NULL \
         ORDER BY last_attempt_at DESC LIMIT 1",
    )
    .bind(sink)
    .bind(DeliveryState::Retrying.as_str())
    .bind(DeliveryState::Dead.as_str())
    .fetch_optional(conn)
    .await?)
}

/// Per sink, when the oldest event still waiting for it (queued or retrying) was written:
/// the delivery lag operators alert on. The oldest is the one with the smallest sequence
/// number (events are numbered as they are written), found in the index
/// `(state, sink, event_seq)` alone, so only one event per sink is read, however long the
/// backlog. Grouped by an expression: SQLite with statistics would otherwise walk the
/// `(sink, order_key, event_seq)` index, every delivery kept, for the grouping's order.
pub async fn oldest_pending(conn: &mut AnyConnection) -> Result<Vec<(String, i64)>> {
    Ok(sqlx::query_as(
        "SELECT p.s, e.created_at FROM (SELECT sink || '' AS s, MIN(event_seq) AS seq \
         FROM notify_deliveries WHERE state IN ($1, $2) GROUP BY s) p \
         JOIN notify_events e ON e.seq = p.seq",
    )
    .bind(DeliveryState::Queued.as_str())
    .bind(DeliveryState::Retrying.as_str())
    .fetch_all(conn)
    .await?)
}

/// Deletes the dead deliveries of `sink` (an admin gave up on them); returns how many.
pub async fn discard_dead(w: &mut WriteTx, sink: &str) -> Result<u64> {
    let r = sqlx::query("DELETE FROM notify_deliveries WHERE sink = $1 AND state = $2")
        .bind(sink)
        .bind(DeliveryState::Dead.as_str())
        .execute(w.conn())
        .await?;
    Ok(r.rows_affected())
}

/// Per sink, how many of its queued and retrying deliveries a controller holds a lease on
/// at `now` (an attempt under way). Reads only the pending deliveries (index on state).
pub async fn in_flight(conn: &mut AnyConnection, now: i64) -> Result<Vec<(String, i64)>> {
    Ok(sqlx::query_as(
        "SELECT sink || '' AS s, COUNT(*) FROM notify_deliveries WHERE state IN ($1, $2) \
         AND lease_until IS NOT NULL AND lease_until >= $3 GROUP BY s",
    )
    .bind(DeliveryState::Queued.as_str())
    .bind(DeliveryState::Retrying.as_str())
    .bind(now)
    .fetch_all(conn)
    .await?)
}

/// Per sink, when its latest delivery succeeded: one kept row per sink (`notify_delivered`,
/// moved forward in the transaction that records deliveries), so reading it costs the same
/// however many deliveries are kept. A sink absent from the answer never had one.
pub async fn last_delivered(conn: &mut AnyConnection) -> Result<Vec<(String, Option<i64>)>> {
    Ok(
        sqlx::query_as("SELECT sink, last_delivered_at FROM notify_delivered")
            .fetch_all(conn)
            .await?,
    )
}

/// A dead delivery with what its event is about (never the event's body).
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct DeadRow {
    pub event_seq: i64,
    /// The event's id (the `Jitgate-Delivery` header).
    pub event_id: String,
    /// `EventType::as_str`.
    pub event_type: String,
    /// What the event concerns: `request:ID`, `vm:GROUP/VM`, `policy:GROUP[/VM]` or
    /// `event:ID` ([`jitgate_notify::Event::order_key`]).
    pub order_key: String,
    /// When the event was written.
    pub created_at: i64,
    pub attempts: i64,
    /// `FailureKind::as_str`.
    pub last_kind: Option<String>,
    /// `StatusClass::as_str`, when there was an answer.
    pub last_status: Option<String>,
    /// Short, never a response body or a URL; still text from elsewhere (shown escaped).
    pub last_detail: Option<String>,
    pub last_attempt_at: Option<i64>,
}

/// Up to `limit` dead deliveries of `sink` with an event seq below `before`, newest event
/// first (keyset by seq): the sink's dead rows through the index `(sink, state)`, the page
/// chosen among them first, then only its events read by primary key.
pub async fn dead(
    conn: &mut AnyConnection,
    sink: &str,
    before: i64,
    limit: i64,
) -> Result<Vec<DeadRow>> {
    Ok(sqlx::query_as(
        "SELECT d.event_seq, e.id AS event_id, e.event_type, e.order_key, e.created_at, \
         d.attempts, d.last_kind, d.last_status, d.last_detail, d.last_attempt_at \
         FROM (SELECT event_seq, attempts, last_kind, last_status, last_detail, \
           last_attempt_at FROM notify_deliveries \
           WHERE sink = $1 AND state = $2 AND event_seq < $3 \
           ORDER BY event_seq DESC LIMIT $4) d \
         JOIN notify_events e ON e.seq = d.event_seq ORDER BY d.event_seq DESC",
    )
    .bind(sink)
    .bind(DeliveryState::Dead.as_str())
    .bind(before)
    .bind(limit)
    .fetch_all(conn)
    .await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The literal pending states are the crate's queued and retrying states.
    #[test]
    fn pending_literals_are_the_pending_states() {
        assert_eq!(
            PENDING,
            format!(
                "('{}', '{}')",
                DeliveryState::Queued.as_str(),
                DeliveryState::Retrying.as_str()
            )
        );
    }
}
