//! The writer thread: the only writer of the grant journal and the audit log. It takes every
//! job waiting and makes the batch durable with one fsync per file (group commit), then
//! answers each job that asked, broadcasts the new audit lines, and publishes the chain head.

use crate::audit::{AuditEvent, AuditLine, AuditLog};
use crate::grant_table::Snapshot;
use crate::journal::{Journal, Record};
use crate::schedule::Booking;
use std::sync::{Arc, Mutex};
use tokio::sync::{broadcast, mpsc, oneshot};

/// At most this many jobs are committed together.
const BATCH: usize = 4096;
/// After a batch of at least this many records (a mass expiry, a compaction), the freed
/// buffers are given back to the kernel at once rather than at the core's next sweep.
const TRIM_AFTER: usize = 16384;

/// What the writer reports back: `Ok` once the job's records are durable.
pub(super) type Done = oneshot::Sender<Result<(), String>>;

/// The audit chain's head (hash, seq), as the status and the heartbeat report it.
pub(super) type AuditHead = Arc<Mutex<(String, u64)>>;

/// What a compacted journal holds: the open grants and the bookings still waiting.
pub(super) struct Compaction {
    pub grants: Snapshot,
    pub booked: Vec<Booking>,
    /// The replay high-water mark (kept across the rewrite).
    pub high_water: u64,
}

pub(super) struct WriteJob {
    pub journal: Vec<Record>,
    pub audit: Vec<AuditEvent>,
    /// fsync before answering (grant changes); data-plane events only need ordering.
    pub durable: bool,
    /// Rewrite the journal to exactly these grants (after many removals).
    pub compact: Option<Compaction>,
    pub done: Option<Done>,
}

impl WriteJob {
    /// Audit records only.
    pub fn audit(events: Vec<AuditEvent>, durable: bool) -> Self {
        WriteJob {
            journal: Vec::new(),
            audit: events,
            durable,
            compact: None,
            done: None,
        }
    }

    /// Journal and audit records made durable together; the receiver learns when.
    pub fn durable(
        journal: Vec<Record>,
        audit: Vec<AuditEvent>,
    ) -> (Self, oneshot::Receiver<Result<(), String>>) {
        let (tx, rx) = oneshot::channel();
        let job = WriteJob {
            journal,
            audit,
            durable: true,
            compact: None,
            done: Some(tx),
        };
        (job, rx)
    }
}

/// Starts the writer thread; it runs until every sender is dropped.
pub(super) fn spawn(
    journal: Journal,
    log: AuditLog,
    rx: mpsc::Receiver<WriteJob>,
    lines: broadcast::Sender<AuditLine>,
    head: AuditHead,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("journal-writer".into())
        .spawn(move || run(journal, log, rx, lines, head))
}

fn run(
    mut journal: Journal,
    mut log: AuditLog,
    mut rx: mpsc::Receiver<WriteJob>,
    lines: broadcast::Sender<AuditLine>,
    head: AuditHead,
) {
    while let Some(first) = rx.blocking_recv() {
        let mut jobs = vec![first];
        while jobs.len() < BATCH {
            match rx.try_recv() {
                Ok(j) => jobs.push(j),
                Err(_) => break,
            }
        }
        let durable = jobs.iter().any(|j| j.durable);
        let mut big = jobs
            .iter()
            .map(|j| j.journal.len() + j.audit.len())
            .sum::<usize>()
            >= TRIM_AFTER;
        let mut result: Result<(), String> = Ok(());
        // In order: a snapshot holds the effect of every record sent before it, none after.
        let mut records: Vec<Record> = Vec::new();
        for j in &mut jobs {
            records.append(&mut j.journal);
            if let Some(live) = j.compact.take() {
                big = true;
                if let Err(e) = journal.append(&records) {
                    result = Err(format!("journal: {e}"));
                }
                records.clear();
                let live_records = std::iter::once(Record::HighWater {
                    seq: live.high_water,
                })
                .chain(live.grants.records().map(Record::Grant))
                .chain(live.booked.into_iter().map(Record::Scheduled));
                if let Err(e) = journal.compact(live_records) {
                    tracing::error!(error = %e, "journal compaction failed");
                }
            }
        }
        if let Err(e) = journal.append(&records) {
            result = Err(format!("journal: {e}"));
        }
        drop(records);
        let events: Vec<AuditEvent> = jobs
            .iter_mut()
            .flat_map(|j| std::mem::take(&mut j.audit))
            .collect();
        match log.append(events) {
            Ok(written) => {
                if durable && let Err(e) = log.sync() {
                    result = Err(format!("audit log: {e}"));
                }
                for l in written {
                    let _ = lines.send(l);
                }
                if let Ok(mut h) = head.lock() {
                    let (hash, seq) = log.head();
                    *h = (hash.to_string(), seq);
                }
            }
            Err(e) => result = Err(format!("audit log: {e}")),
        }
        for j in jobs {
            if let Some(done) = j.done {
                let _ = done.send(result.clone());
            }
        }
        if big {
            // SAFETY: glibc's malloc_trim only releases free memory.
            unsafe { libc::malloc_trim(0) };
        }
    }
    let _ = log.sync();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grant_table::GrantTable;
    use crate::journal::RemoveReason;
    use crate::journal::tests::grant;

    fn job(journal: Vec<Record>) -> WriteJob {
        WriteJob {
            journal,
            ..WriteJob::audit(Vec::new(), true)
        }
    }

    /// Jobs queued behind a compaction in the same batch are written after it: a grant
    /// applied after the snapshot survives, one removed after it does not come back.
    #[test]
    fn compaction_keeps_the_records_that_follow_it() {
        let dir = tempfile::tempdir().unwrap();
        let (journal, _) = Journal::open(dir.path()).unwrap();
        let log = AuditLog::open(dir.path(), u64::MAX).unwrap();
        let (tx, rx) = mpsc::channel(16);
        let (a, b) = (grant(1), grant(2));
        let mut table = GrantTable::new(Arc::from("b"));
        table.insert(&a).unwrap();
        tx.try_send(job(vec![Record::Grant(a.clone())])).unwrap();
        tx.try_send(WriteJob {
            compact: Some(Compaction {
                grants: table.snapshot(),
                booked: Vec::new(),
                high_water: 0,
            }),
            ..job(Vec::new())
        })
        .unwrap();
        tx.try_send(job(vec![
            Record::Grant(b.clone()),
            Record::Remove {
                id: a.id,
                reason: RemoveReason::Revoked,
            },
        ]))
        .unwrap();
        drop(tx);
        let (lines, _) = broadcast::channel(16);
        spawn(journal, log, rx, lines, AuditHead::default())
            .unwrap()
            .join()
            .unwrap();
        let (_, replay) = Journal::open(dir.path()).unwrap();
        assert_eq!(replay.grants.into_values().collect::<Vec<_>>(), vec![b]);
    }
}
