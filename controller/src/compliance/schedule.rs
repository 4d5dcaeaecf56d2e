//! The evaluation cycle: an evaluation every `scan_every`, a full probe every `probe_every`
//! (the probe's evaluation replaces the plain one due then). One evaluation runs at a time,
//! also against on-demand ones (they share the service's lock). Scheduled evaluations run on
//! the leader only (`lease`); on demand, any controller evaluates.

use jitgate_api::ScanReason;
use tokio::sync::watch;

use crate::compliance::Compliance;
use crate::lease::Leader;

/// Runs the cycle until `shutdown` turns true.
pub fn spawn(
    c: Compliance,
    leader: Leader,
    mut shutdown: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let (scan_every, probe_every) = (c.settings.scan_every, c.settings.probe_every);
        if scan_every.is_none() && probe_every.is_none() {
            tracing::info!("compliance runs on demand only");
            return;
        }
        let start = tokio::time::Instant::now();
        let next = |every: Option<std::time::Duration>| every.map(|e| start + e);
        let (mut next_scan, mut next_probe) = (next(scan_every), next(probe_every));
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
                next_probe = probe_every.map(|e| now + e);
            }
            if next_scan.is_some_and(|p| p <= now) || probe {
                next_scan = scan_every.map(|e| now + e);
            }
            let run = leader.run(c.evaluate(ScanReason::Schedule, probe, None));
            if let Some(Err(e)) = run.await {
                tracing::error!(error = %e, "scheduled compliance evaluation failed");
            }
        }
    })
}
