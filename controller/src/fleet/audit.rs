//! Agents' audit records, group-committed: the records every agent connection has waiting
//! go into one write transaction (one fsync on SQLite), as acknowledgements do. One
//! transaction per agent message held the one writer for a commit per applied grant, and
//! with many agents busy the initiates waited behind them (`cargo xtask bench e2e`).

use jitgate_proto::message::AuditRecord;
use tokio::sync::{mpsc, oneshot};

use crate::error::Result;
use crate::store::agent_audit;
use crate::store::db::Db;
use crate::store::write::{Writer, group_commit, spawn_writers};

/// Agent messages per transaction at most.
const MAX_BATCH: usize = 256;

/// One agent message's records and where the outcome goes.
pub struct Job {
    pub agent: String,
    pub records: Vec<AuditRecord>,
    pub reply: oneshot::Sender<Result<()>>,
}

/// Starts the writer of audit records (it stops when the last sender is dropped).
pub fn start(db: &Db) -> Result<mpsc::Sender<Job>> {
    let (tx, rx) = mpsc::channel(4096);
    let writer = db.writer().clone();
    spawn_writers(db.backend(), async move {
        group_commit(rx, MAX_BATCH, |jobs| {
            let w = writer.clone();
            async move { run_batch(&w, jobs).await }
        })
        .await;
    })?;
    Ok(tx)
}

/// Writes one batch in one transaction. If it fails, each agent message is written again
/// alone, so that one agent's records the database refuses (PostgreSQL aborts the whole
/// transaction on any error) fail that agent's connection only.
async fn run_batch(writer: &Writer, jobs: Vec<Job>) {
    let res = write(writer, &jobs).await;
    tracing::debug!(batch = jobs.len(), "audit batch");
    match res {
        Ok(()) => {
            for j in jobs {
                let _ = j.reply.send(Ok(()));
            }
        }
        Err(e) if jobs.len() > 1 => {
            tracing::warn!(error = %e, batch = jobs.len(), "audit batch failed; writing each agent's records alone");
            for j in jobs {
                let r = write(writer, std::slice::from_ref(&j)).await;
                if let Err(e) = &r {
                    tracing::error!(agent = %j.agent, error = %e, "audit records not stored");
                }
                let _ = j.reply.send(r);
            }
        }
        Err(e) => {
            // One job: its own outcome.
            if let Some(j) = jobs.into_iter().next() {
                tracing::error!(agent = %j.agent, error = %e, "audit records not stored");
                let _ = j.reply.send(Err(e));
            }
        }
    }
}

/// The records of `jobs`, in one transaction.
async fn write(writer: &Writer, jobs: &[Job]) -> Result<()> {
    let mut w = writer.begin().await?;
    for j in jobs {
        agent_audit::insert(&mut w, &j.agent, &j.records).await?;
    }
    w.commit().await
}
