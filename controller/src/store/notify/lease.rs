//! The leased claim of due deliveries: a round claims them for one controller until a
//! lease's end, attempts them outside the transaction, and records each outcome fenced by
//! that same lease (owner and end), so that an outcome or a give-back from a claim that
//! expired never touches a later claim of the same delivery, by another controller or by
//! this one. The leader's round clears the leases that expired ([`reclaim`]).

use jitgate_notify::DeliveryState;
use sqlx::AnyConnection;

use super::{FANNED, PENDING, add_delivered};
use crate::error::Result;
use crate::store::write::{WriteTx, Writer};

/// A delivery claimed for one attempt.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct Claimed {
    pub event_seq: i64,
    /// Attempts so far, this one included.
    pub attempts: i64,
    pub first_attempt_at: i64,
    /// The end of the lease it was claimed under: with the owner, what fences its outcome.
    pub lease_until: i64,
}

/// Claims up to `limit` due deliveries of `sink` for `owner` until `lease_until`: pending,
/// due, not leased, and the first pending one of their order key (per-request order). A
/// lease that expired counts only once [`reclaim`] cleared it (earlier in the same round).
///
/// The state, due time and lease conditions are repeated outside the subquery: on
/// PostgreSQL a row another controller changed meanwhile is re-checked against the outer
/// conditions only, and a delivery just recorded delivered (lease cleared) must not be
/// claimed again.
pub async fn claim(
    w: &mut WriteTx,
    owner: &str,
    sink: &str,
    now: i64,
    lease_until: i64,
    limit: i64,
) -> Result<Vec<Claimed>> {
    Ok(sqlx::query_as(&claim_sql())
        .bind(owner)
        .bind(lease_until)
        .bind(now)
        .bind(sink)
        .bind(limit)
        .fetch_all(w.conn())
        .await?)
}

/// The statement of [`claim`] (its parameters: owner, lease end, now, sink, limit). The
/// candidates come in order from the partial index `notify_deliveries_claim`, which holds
/// the pending deliveries that no controller holds (migration 36): the sink's delivered
/// rows (kept for the retention), its dead ones, and the ones leased for an attempt under
/// way (up to [`AHEAD`](crate::outbox::worker::AHEAD) x
/// [`PER_SINK`](crate::outbox::worker::PER_SINK), the oldest, so first in the index, in
/// every round) are never read.
pub fn claim_sql() -> String {
    format!(
        "UPDATE notify_deliveries SET lease_owner = $1, lease_until = $2, \
         attempts = attempts + 1, first_attempt_at = COALESCE(first_attempt_at, $3), \
         last_attempt_at = $3 \
         WHERE sink = $4 AND lease_owner IS NULL \
         AND state IN {PENDING} AND next_attempt_at <= $3 AND event_seq IN ( \
           SELECT d.event_seq FROM notify_deliveries d WHERE d.sink = $4 AND {} \
           ORDER BY d.event_seq LIMIT $5) \
         RETURNING event_seq, attempts, first_attempt_at, lease_until",
        claimable("$3")
    )
}

/// The condition on a delivery `d` that a claim at time `now` (a statement parameter)
/// takes: pending, due, not leased, and the first pending one of its order key to its sink
/// (per-request order; the earlier ones are found in `notify_deliveries_order`).
fn claimable(now: &str) -> String {
    format!(
        "d.state IN {PENDING} AND d.lease_owner IS NULL AND d.next_attempt_at <= {now} \
         AND NOT EXISTS (SELECT 1 FROM notify_deliveries p WHERE p.sink = d.sink \
           AND p.order_key = d.order_key AND p.event_seq < d.event_seq \
           AND p.state IN {PENDING})"
    )
}

/// The statement of [`reclaim`] (its parameter: now): the expired leases, from the partial
/// index `notify_deliveries_leased` (the leased deliveries alone, by expiry), so that a
/// round in which no lease has expired reads one index entry at most.
pub const RECLAIM: &str = "UPDATE notify_deliveries SET lease_owner = NULL, lease_until = NULL \
     WHERE lease_owner IS NOT NULL AND lease_until < $1";

/// Clears the leases that ended before `now` (their controller stopped, or stalled past
/// them): the deliveries are pending again and enter the claim's index, and the claim that
/// follows in the same round takes them (their attempt count stays: the attempt may have
/// been made). The controller that held one records nothing for it any more (its outcome
/// is fenced by the lease). Returns how many.
pub async fn reclaim(w: &mut WriteTx, now: i64) -> Result<u64> {
    Ok(sqlx::query(RECLAIM)
        .bind(now)
        .execute(w.conn())
        .await?
        .rows_affected())
}

/// The outcome of one attempt.
#[derive(Clone, Debug)]
pub struct Attempted {
    pub state: DeliveryState,
    pub next_attempt_at: i64,
    /// `FailureKind::as_str`, or `delivered`.
    pub kind: &'static str,
    pub status: Option<&'static str>,
    /// Short, never a response body or a URL.
    pub detail: Option<String>,
    pub delivered_at: Option<i64>,
}

/// The statement of [`work_waiting`] (its parameters: the fan-out counter's name, now):
/// an event after the fan-out mark (the events' primary key), a delivery a claim would take
/// (from the partial index `notify_deliveries_due`), or a lease that expired
/// (`notify_deliveries_leased`). A due delivery queued behind an earlier one of its request
/// that waits to be retried is not work: while a sink is down, its queue costs a read per
/// poll, not an empty write round.
pub fn work_waiting_sql() -> String {
    format!(
        "SELECT (SELECT COUNT(*) FROM (SELECT 1 FROM notify_events WHERE seq > \
         (SELECT value FROM counters WHERE name = $1) LIMIT 1) e) \
         + (SELECT COUNT(*) FROM (SELECT 1 FROM notify_deliveries d WHERE {} LIMIT 1) w) \
         + (SELECT COUNT(*) FROM (SELECT 1 FROM notify_deliveries \
         WHERE lease_owner IS NOT NULL AND lease_until < $2 LIMIT 1) l)",
        claimable("$2")
    )
}

/// Whether a round has anything to do besides recording outcomes: an event not fanned
/// out, a delivery a claim would take, or a lease that expired (a read, so an idle worker
/// writes nothing).
pub async fn work_waiting(conn: &mut AnyConnection, now: i64) -> Result<bool> {
    let (n,): (i64,) = sqlx::query_as(&work_waiting_sql())
        .bind(FANNED)
        .bind(now)
        .fetch_one(conn)
        .await?;
    Ok(n > 0)
}

/// A claim that ended, to record: the delivery (sink, event seq), the end of the lease it
/// was claimed under, and the attempt's outcome (none: not attempted).
#[derive(Clone, Debug)]
pub struct Ended {
    pub sink: String,
    pub event_seq: i64,
    pub lease_until: i64,
    pub attempted: Option<Attempted>,
}

/// Records claims' ends in the worker's transaction, each fenced by its lease (`owner` and
/// the lease's end): false for one whose lease is no longer that one (expired, then cleared
/// or claimed again, by another controller or by this one; that row is left alone). No
/// outcome means the claim was not attempted: its lease is given back and the attempt it
/// counted is taken back. Deliveries are recorded in one statement per sink and lease (at
/// most [`RECORD_CHUNK`] at a time), with the latest of their times as `delivered_at`;
/// failures one by one.
pub async fn record_all(w: &mut WriteTx, owner: &str, ended: &[Ended]) -> Result<Vec<bool>> {
    let mut held = vec![false; ended.len()];
    // Deliveries by (sink, kind, status class, lease end): (index, seq), the latest time.
    let mut delivered: Vec<Delivered> = Vec::new();
    for (i, e) in ended.iter().enumerate() {
        let r = match &e.attempted {
            Some(a) if a.state == DeliveryState::Delivered => {
                let at = a.delivered_at.unwrap_or(a.next_attempt_at);
                let key = (e.sink.as_str(), a.kind, a.status, e.lease_until);
                match delivered.iter_mut().find(|d| d.key == key) {
                    Some(d) => {
                        d.rows.push((i, e.event_seq));
                        d.latest = d.latest.max(at);
                    }
                    None => delivered.push(Delivered {
                        key,
                        rows: vec![(i, e.event_seq)],
                        latest: at,
                    }),
                }
                continue;
            }
            Some(a) => {
                sqlx::query(
                    "UPDATE notify_deliveries SET state = $1, next_attempt_at = $2, \
                     last_kind = $3, last_status = $4, last_detail = $5, delivered_at = $6, \
                     lease_owner = NULL, lease_until = NULL \
                     WHERE event_seq = $7 AND sink = $8 AND lease_owner = $9 \
                     AND lease_until = $10",
                )
                .bind(a.state.as_str())
                .bind(a.next_attempt_at)
                .bind(a.kind)
                .bind(a.status)
                .bind(a.detail.as_deref())
                .bind(a.delivered_at)
                .bind(e.event_seq)
                .bind(&e.sink)
                .bind(owner)
                .bind(e.lease_until)
                .execute(w.conn())
                .await?
            }
            None => {
                sqlx::query(
                    "UPDATE notify_deliveries SET lease_owner = NULL, lease_until = NULL, \
                     first_attempt_at = CASE WHEN attempts <= 1 THEN NULL \
                     ELSE first_attempt_at END, \
                     attempts = CASE WHEN attempts > 0 THEN attempts - 1 ELSE 0 END \
                     WHERE event_seq = $1 AND sink = $2 AND lease_owner = $3 \
                     AND lease_until = $4",
                )
                .bind(e.event_seq)
                .bind(&e.sink)
                .bind(owner)
                .bind(e.lease_until)
                .execute(w.conn())
                .await?
            }
        };
        held[i] = r.rows_affected() == 1;
    }
    for d in delivered {
        let (sink, kind, status, lease_until) = d.key;
        for chunk in d.rows.chunks(RECORD_CHUNK) {
            let marks: Vec<String> = (0..chunk.len()).map(|k| format!("${}", k + 8)).collect();
            let sql = format!(
                "UPDATE notify_deliveries SET state = $1, next_attempt_at = $2, \
                 delivered_at = $2, last_kind = $3, last_status = $4, last_detail = NULL, \
                 lease_owner = NULL, lease_until = NULL \
                 WHERE sink = $5 AND lease_owner = $6 AND lease_until = $7 \
                 AND event_seq IN ({}) RETURNING event_seq",
                marks.join(", ")
            );
            let mut q = sqlx::query_as::<_, (i64,)>(&sql)
                .bind(DeliveryState::Delivered.as_str())
                .bind(d.latest)
                .bind(kind)
                .bind(status)
                .bind(sink)
                .bind(owner)
                .bind(lease_until);
            for (_, seq) in chunk {
                q = q.bind(*seq);
            }
            let done: std::collections::HashSet<i64> = q
                .fetch_all(w.conn())
                .await?
                .into_iter()
                .map(|(s,)| s)
                .collect();
            for (i, seq) in chunk {
                held[*i] = done.contains(seq);
            }
            add_delivered(w, sink, done.len() as i64, d.latest).await?;
        }
    }
    Ok(held)
}

/// Deliveries of one sink recorded together: (sink, kind, status class, lease end), the
/// rows (index in the outcomes, event seq), and the latest delivery time among them.
struct Delivered<'a> {
    key: (&'a str, &'static str, Option<&'static str>, i64),
    rows: Vec<(usize, i64)>,
    latest: i64,
}

/// Most deliveries recorded by one statement.
const RECORD_CHUNK: usize = 500;

/// Gives up `owner`'s leases (at shutdown: another controller, or this one restarted, takes
/// them at once instead of after the lease).
pub async fn release(writer: &Writer, owner: &str) -> Result<u64> {
    let mut w = writer.lock().await;
    let r = sqlx::query(
        "UPDATE notify_deliveries SET lease_owner = NULL, lease_until = NULL \
         WHERE lease_owner = $1",
    )
    .bind(owner)
    .execute(w.conn())
    .await?;
    Ok(r.rows_affected())
}
