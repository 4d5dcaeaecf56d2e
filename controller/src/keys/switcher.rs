//! The switch without an operator: while this controller leads the cluster, it looks every
//! [`every`] for a rotation under way and switches once every active agent acknowledged the
//! announced key, or once `[keys] switch_grace_seconds` passed since its announcement
//! ([`super::rotation::Rotation::switch_if_due`]), and not while a live controller of the
//! cluster lacks the announced key's private half (`controller_keys`). Leader work: fenced, so one controller
//! of a cluster switches, once.

use std::time::Duration;

use tokio::sync::watch;

use super::KeyError;
use super::files::KeyDir;
use super::rotation::Rotation;
use crate::app::App;

/// How often the leader looks: a quarter of the grace, from 1 s to 10 s.
pub fn every(grace: Duration) -> Duration {
    (grace / 4).clamp(Duration::from_secs(1), Duration::from_secs(10))
}

/// Runs until `shutdown`.
pub fn spawn(
    app: App,
    dir: KeyDir,
    grace: Duration,
    mut shutdown: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    let rotation = Rotation::new(app.db.clone(), dir);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every(grace));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Said once per key, not at every look.
        let mut told_missing = None;
        let mut told_lacking: Option<(jitgate_proto::KeyId, Vec<String>)> = None;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.changed() => break,
            }
            let Some(r) = app.leader.run(rotation.switch_if_due(grace)).await else {
                continue;
            };
            match r {
                Ok(Some(s)) => {
                    app.keys.refresh(&app.db).await.unwrap_or_else(|e| {
                        tracing::warn!(error = %e, "cannot read the grant-signing keys");
                    });
                    tracing::info!(retired = %s.retired_key_id, current = %s.current_key_id,
                        not_acknowledged = s.not_acknowledged.len(),
                        "grant-signing key switched by the leader");
                }
                Ok(None) => {}
                Err(KeyError::MissingPrivate(id)) => {
                    if told_missing != Some(id) {
                        tracing::error!(key = %id, "the switch is due but this controller (the leader) lacks the announced key's private half: copy keys/grant-{id}.key here");
                        told_missing = Some(id);
                    }
                }
                Err(KeyError::ControllersLack { key, controllers }) => {
                    let now = Some((key, controllers.clone()));
                    if told_lacking != now {
                        tracing::warn!(%key, controllers = %controllers.join(", "),
                            "the key switch is due but waits: live controllers lack the announced key's private half");
                        told_lacking = now;
                    }
                }
                Err(e) => tracing::error!(error = %e, "the automatic key switch failed"),
            }
        }
    })
}
