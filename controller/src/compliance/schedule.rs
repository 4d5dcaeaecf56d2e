//! The evaluation cycle: an evaluation every `scan_every`, a full probe every `probe_every`
//! (the probe's evaluation replaces the plain one due then). One cycle runs at a time, also
//! against on-demand scans (they share [`Scheduler::lock`]).

use std::sync::Arc;

use tokio::sync::{Mutex, watch};

use super::{ScanSummary, Settings, evaluate};
use crate::error::StoreError;
use crate::store::Store;
use jitgate_api::ScanReason;

/// Runs evaluations, scheduled and on demand, one at a time.
#[derive(Clone)]
pub struct Scheduler {
    pub store: Store,
    pub settings: Arc<Settings>,
    lock: Arc<Mutex<()>>,
}

impl Scheduler {
    pub fn new(store: Store, settings: Arc<Settings>) -> Scheduler {
        Scheduler {
            store,
            settings,
            lock: Arc::new(Mutex::new(())),
        }
    }

    /// One evaluation now (waits for a running one to finish first).
    pub async fn scan(
        &self,
        reason: ScanReason,
        probe: bool,
        range: Option<jitgate_common::SourcePrefix>,
    ) -> Result<ScanSummary, StoreError> {
        let _one = self.lock.lock().await;
        evaluate::run_scan(&self.store, &self.settings, reason, probe, range).await
    }

    /// The background cycle, until `shutdown` turns true.
    pub fn spawn(self, mut shutdown: watch::Receiver<bool>) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            if self.settings.scan_every.is_none() && self.settings.probe_every.is_none() {
                tracing::info!("compliance runs on demand only");
                return;
            }
            let start = tokio::time::Instant::now();
            let next = |every: Option<std::time::Duration>| every.map(|e| start + e);
            let (mut next_scan, mut next_probe) = (
                next(self.settings.scan_every),
                next(self.settings.probe_every),
            );
            loop {
                let due = match (next_scan, next_probe) {
                    (Some(a), Some(b)) => a.min(b),
                    (Some(a), None) | (None, Some(a)) => a,
                    (None, None) => return,
                };
                tokio::select! {
                    _ = tokio::time::sleep_until(due) => {}
                    _ = shutdown.changed() => return,
                }
                let now = tokio::time::Instant::now();
                let probe = next_probe.is_some_and(|p| p <= now);
                if probe {
                    next_probe = self.settings.probe_every.map(|e| now + e);
                }
                if next_scan.is_some_and(|p| p <= now) || probe {
                    next_scan = self.settings.scan_every.map(|e| now + e);
                }
                if let Err(e) = self.scan(ScanReason::Schedule, probe, None).await {
                    tracing::error!(error = %e, "scheduled compliance evaluation failed");
                }
            }
        })
    }
}
