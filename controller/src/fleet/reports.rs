//! Agents' liveness and status reports, written in batches. A connected agent is heard from
//! every few seconds (a status report every 10 s, pongs in between); one write transaction
//! per report would make the single writer's work grow with the fleet. Reports are kept
//! here, the latest per agent, and written every [`FLUSH_EVERY`] in one statement per 500
//! agents: on PostgreSQL outside the write lock (the rows are the agents' own, not part of
//! the activity chain or any sequence), on SQLite in one write transaction.
//!
//! Hook reports (protocol level 7) are kept and written the same way, into `agents.hooks`.
//!
//! A report is therefore visible in the database up to [`FLUSH_EVERY`] after it arrived.
//! Nothing here is lost that matters: a failed write is retried at the next flush (unless
//! a newer report replaced it), and at shutdown the last ones are written.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::error::Result;
use crate::store::agents::{self, Heartbeat};
use crate::store::backend::Backend;
use crate::store::db::Db;

/// How often the kept reports are written.
pub const FLUSH_EVERY: Duration = Duration::from_secs(1);

/// The reports not yet written: per agent id, its latest status report, or `None` when it was
/// only heard from (its last-seen time moves, its stored report stays).
#[derive(Default)]
pub struct Reports {
    pending: Mutex<HashMap<String, Option<Heartbeat>>>,
    /// Hook reports not yet written: per agent id, its latest (JSON), kept only when it
    /// differs from the one before on the same connection.
    hooks: Mutex<HashMap<String, String>>,
}

impl Reports {
    /// Keeps `agent`'s latest word: a report replaces an earlier one; being heard from does
    /// not drop a report not yet written.
    pub fn note(&self, agent: &str, report: Option<Heartbeat>) {
        let mut p = self.lock();
        match p.entry(agent.to_string()) {
            Entry::Occupied(mut e) => {
                if report.is_some() {
                    e.insert(report);
                }
            }
            Entry::Vacant(e) => {
                e.insert(report);
            }
        }
    }

    /// Keeps `agent`'s latest hook report (JSON), replacing one not yet written.
    pub fn note_hooks(&self, agent: &str, hooks: String) {
        self.lock_hooks().insert(agent.to_string(), hooks);
    }

    /// How many agents have something not yet written.
    pub fn pending(&self) -> usize {
        self.lock().len() + self.lock_hooks().len()
    }

    /// The hook reports kept, sorted by agent id.
    fn take_hooks(&self) -> Vec<(String, String)> {
        let mut rows: Vec<_> = std::mem::take(&mut *self.lock_hooks())
            .into_iter()
            .collect();
        rows.sort();
        rows
    }

    /// Puts back hook reports whose write failed, unless a newer one came meanwhile.
    fn put_back_hooks(&self, rows: Vec<(String, String)>) {
        let mut p = self.lock_hooks();
        for (id, hooks) in rows {
            p.entry(id).or_insert(hooks);
        }
    }

    fn lock_hooks(&self) -> std::sync::MutexGuard<'_, HashMap<String, String>> {
        self.hooks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Everything kept, sorted by agent id (the order rows are locked in).
    fn take(&self) -> Vec<(String, Option<Heartbeat>)> {
        let mut rows: Vec<_> = std::mem::take(&mut *self.lock()).into_iter().collect();
        rows.sort_by(|a, b| a.0.cmp(&b.0));
        rows
    }

    /// Puts back rows whose write failed, unless a newer word came meanwhile.
    fn put_back(&self, rows: Vec<(String, Option<Heartbeat>)>) {
        let mut p = self.lock();
        for (id, report) in rows {
            match p.entry(id) {
                Entry::Occupied(mut e) => {
                    if e.get().is_none() && report.is_some() {
                        e.insert(report);
                    }
                }
                Entry::Vacant(e) => {
                    e.insert(report);
                }
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Option<Heartbeat>>> {
        // A panic while holding the map leaves it whole (every change is one call).
        self.pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Writes what is kept; on failure keeps it for the next flush. Returns how many agents
/// were written.
pub async fn flush(db: &Db, reports: &Reports) -> Result<usize> {
    let rows = reports.take();
    let hooks = reports.take_hooks();
    if rows.is_empty() && hooks.is_empty() {
        return Ok(0);
    }
    let written = write(db, &rows, &hooks).await;
    match written {
        Ok(()) => Ok(rows.len().max(hooks.len())),
        Err(e) => {
            reports.put_back(rows);
            reports.put_back_hooks(hooks);
            Err(e)
        }
    }
}

async fn write(
    db: &Db,
    rows: &[(String, Option<Heartbeat>)],
    hooks: &[(String, String)],
) -> Result<()> {
    match db.backend() {
        Backend::Sqlite => {
            let mut w = db.begin().await?;
            let now = w.now;
            agents::seen_many(w.conn(), now, rows).await?;
            agents::hooks_many(w.conn(), hooks).await?;
            w.commit().await
        }
        Backend::Postgres => {
            let mut tx = db.pool().begin().await?;
            agents::seen_many(&mut tx, jitgate_api::time::now_ms(), rows).await?;
            agents::hooks_many(&mut tx, hooks).await?;
            tx.commit().await?;
            Ok(())
        }
    }
}

/// Flushes every [`FLUSH_EVERY`] until `shutdown` turns true, then once more.
pub fn spawn(
    db: Db,
    reports: std::sync::Arc<Reports>,
    mut shutdown: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(FLUSH_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.changed() => break,
            }
            once(&db, &reports).await;
        }
        once(&db, &reports).await;
    })
}

async fn once(db: &Db, reports: &Reports) {
    match flush(db, reports).await {
        Ok(0) => {}
        Ok(n) => tracing::trace!(agents = n, "agent reports written"),
        Err(e) => {
            tracing::warn!(error = %e, pending = reports.pending(), "writing agent reports failed; kept for the next try")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hb(grants: u32) -> Option<Heartbeat> {
        Some(Heartbeat {
            active_grants: grants,
            ..Heartbeat::default()
        })
    }

    #[test]
    fn a_report_is_kept_until_replaced_and_being_heard_from_keeps_it() {
        let r = Reports::default();
        r.note("b", hb(1));
        r.note("b", None);
        r.note("a", None);
        let rows = r.take();
        assert_eq!(
            rows,
            vec![("a".to_string(), None), ("b".to_string(), hb(1))]
        );
        assert_eq!(r.pending(), 0);
        r.note("b", hb(1));
        r.note("b", hb(2));
        assert_eq!(r.take(), vec![("b".to_string(), hb(2))]);
    }

    #[test]
    fn a_failed_hook_write_is_put_back_under_a_newer_report() {
        let r = Reports::default();
        r.note_hooks("b", "[1]".into());
        r.note_hooks("a", "[1]".into());
        r.note_hooks("a", "[2]".into());
        assert_eq!(r.pending(), 2);
        let failed = r.take_hooks();
        assert_eq!(
            failed,
            vec![("a".into(), "[2]".into()), ("b".into(), "[1]".into())]
        );
        r.note_hooks("a", "[3]".into());
        r.put_back_hooks(failed);
        assert_eq!(
            r.take_hooks(),
            vec![("a".into(), "[3]".into()), ("b".into(), "[1]".into())]
        );
    }

    #[test]
    fn a_failed_write_is_put_back_under_newer_words() {
        let r = Reports::default();
        r.note("a", hb(1));
        r.note("b", hb(1));
        r.note("c", None);
        let failed = r.take();
        // Meanwhile: a newer report for a, c heard from again, b silent.
        r.note("a", hb(2));
        r.note("c", None);
        r.put_back(failed);
        assert_eq!(
            r.take(),
            vec![
                ("a".to_string(), hb(2)),
                ("b".to_string(), hb(1)),
                ("c".to_string(), None)
            ]
        );
        // A report put back replaces a later "heard from".
        r.note("d", hb(3));
        let failed = r.take();
        r.note("d", None);
        r.put_back(failed);
        assert_eq!(r.take(), vec![("d".to_string(), hb(3))]);
    }
}
