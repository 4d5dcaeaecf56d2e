//! What an operator sees of the notification queue (`jit-controller notify status`), and
//! the re-drive of dead deliveries (`jit-controller notify retry`).

use jitgate_api::{DeliveryFailure, SinkStatus};
use jitgate_notify::DeliveryState;

use crate::error::{Error, Result};
use crate::store::db::Db;
use crate::store::notify;

/// Every sink's status, by name: deliveries per state, those in flight, the latest
/// success, the oldest undelivered event and the last failure still standing.
pub async fn status(db: &Db) -> Result<Vec<SinkStatus>> {
    let mut conn = db.pool().acquire().await?;
    let now = jitgate_api::time::now_ms();
    let counts = notify::counts(&mut conn).await?;
    let in_flight = notify::in_flight(&mut conn, now).await?;
    let delivered_at = notify::last_delivered(&mut conn).await?;
    let oldest = notify::oldest_pending(&mut conn).await?;
    let mut out = Vec::new();
    for s in notify::sinks(&mut conn).await? {
        let n = |state: DeliveryState| {
            counts
                .iter()
                .filter(|(sink, st, _)| *sink == s.name && *st == state)
                .map(|(_, _, n)| *n)
                .sum()
        };
        let of = |v: &[(String, i64)]| v.iter().find(|(sink, _)| *sink == s.name).map(|(_, x)| *x);
        let last_failure =
            notify::last_failure(&mut conn, &s.name)
                .await?
                .map(|f| DeliveryFailure {
                    kind: f.kind,
                    status_class: f.status,
                    detail: f.detail,
                    time_utc: jitgate_api::time::format(f.at),
                });
        out.push(SinkStatus {
            queued: n(DeliveryState::Queued),
            retrying: n(DeliveryState::Retrying),
            delivered: n(DeliveryState::Delivered),
            dead: n(DeliveryState::Dead),
            in_flight: of(&in_flight).unwrap_or(0),
            last_delivered_utc: delivered_at
                .iter()
                .find(|(sink, _)| *sink == s.name)
                .and_then(|(_, at)| *at)
                .map(jitgate_api::time::format),
            oldest_pending_utc: of(&oldest).map(jitgate_api::time::format),
            name: s.name,
            created_by: s.created_by,
            last_failure,
        });
    }
    Ok(out)
}

/// Dead deliveries of `sink` (or of every sink) are attempted again at once, with a fresh
/// give-up window. Returns how many.
pub async fn retry(db: &Db, sink: Option<&str>) -> Result<u64> {
    let mut w = db.begin().await?;
    if let Some(name) = sink
        && !notify::sinks(w.conn())
            .await?
            .iter()
            .any(|s| s.name == name)
    {
        return Err(Error::Internal(format!("no notification sink {name}")));
    }
    let n = notify::retry_dead(&mut w, sink).await?;
    w.commit().await?;
    tracing::info!(
        sink = sink.unwrap_or("*"),
        deliveries = n,
        "dead notifications re-driven"
    );
    Ok(n)
}
