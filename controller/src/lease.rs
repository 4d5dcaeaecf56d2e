//! The leader lease: one controller of a cluster at a time does the work that must happen
//! once (the expiry sweep and approval timeouts, the compliance schedule, activity-log
//! checkpoints and their verification, notification delivery). On SQLite there is one
//! controller and it always leads; the same code runs.
//!
//! Every [`RENEW_DIVISOR`]th of the lease's time each controller either renews the lease it
//! holds or tries to take it if it has expired (a new epoch). The holder believes it leads only
//! until `ttl × 4/5` after the start of its last successful renewal (its own monotonic clock),
//! so it stops before anyone can take over. That belief is only an optimisation: what makes
//! it safe is the fence ([`crate::store::lease::fenced`]) — every write of leader work checks
//! (holder, epoch, expiry) inside its own transaction, which is serialised with takeovers. A
//! holder frozen past its lease (SIGSTOP, a VM paused, a long GC-like stall) wakes to find its
//! writes refused. A controller whose database a newer version migrated (a rolling upgrade)
//! neither takes nor keeps the lease.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::error::Result;
use crate::store::Db;
use crate::store::db::SCHEMA_VERSION;
use crate::store::lease::{self as sql, Fence, HolderInfo, LEADER};

/// The lease is renewed (or a takeover tried) this many times per lease time.
const RENEW_DIVISOR: u32 = 3;

/// This controller's view of the leader lease.
#[derive(Clone)]
pub struct Leader {
    inner: Arc<Inner>,
}

struct Inner {
    /// This controller's id in the lease row.
    holder: String,
    /// Its configuration fingerprint and version, written into the row while it leads.
    info: HolderInfo,
    /// Whether its configuration is the leader's, at the last look (None: not known, or the
    /// leader runs another version: a rolling upgrade).
    config_matches: std::sync::Mutex<Option<bool>>,
    ttl: Duration,
    /// The fence while this controller leads, with the instant its belief ends.
    state: watch::Sender<Option<(Fence, Instant)>>,
    /// When a renewal or a takeover attempt last reached the database and found a live
    /// holder (this controller or another): readiness fails when that is long ago.
    seen_live: std::sync::Mutex<Option<Instant>>,
    started: Instant,
}

/// The lease as this controller sees it (metrics, readiness).
#[derive(Clone, Debug)]
pub struct LeaderStatus {
    pub leading: bool,
    pub epoch: Option<i64>,
    /// Time since a live holder was last seen in the database (None: never yet).
    pub since_live_holder: Option<Duration>,
    /// Whether this controller's configuration is the cluster's (the leader's); None: not
    /// known yet, or the leader runs another version.
    pub config_matches: Option<bool>,
    /// Time since this controller started.
    pub running_for: Duration,
    pub ttl: Duration,
}

impl Leader {
    /// `holder` names this controller in the lease row (unique per process); `config` is
    /// its cluster configuration fingerprint.
    pub fn new(holder: String, config: String, ttl: Duration) -> Leader {
        Leader {
            inner: Arc::new(Inner {
                holder,
                info: HolderInfo {
                    config,
                    version: env!("CARGO_PKG_VERSION").to_string(),
                },
                config_matches: std::sync::Mutex::new(None),
                ttl: ttl.max(Duration::from_secs(1)),
                state: watch::channel(None).0,
                seen_live: std::sync::Mutex::new(None),
                started: Instant::now(),
            }),
        }
    }

    pub fn holder(&self) -> &str {
        &self.inner.holder
    }

    /// The fence to do leader work under, while this controller leads.
    pub fn fence(&self) -> Option<Fence> {
        match &*self.inner.state.borrow() {
            Some((f, until)) if Instant::now() < *until => Some(f.clone()),
            _ => None,
        }
    }

    /// Runs `work` fenced if this controller leads; None (nothing run) if it does not.
    pub async fn run<F: std::future::Future>(&self, work: F) -> Option<F::Output> {
        let fence = self.fence()?;
        Some(sql::fenced(fence, work).await)
    }

    /// Resolves when this controller may have become the leader (or stopped being it).
    pub async fn changed(&self) {
        let mut rx = self.inner.state.subscribe();
        let _ = rx.changed().await;
    }

    pub fn status(&self) -> LeaderStatus {
        let fence = self.fence();
        let since_live_holder = self
            .inner
            .seen_live
            .lock()
            .ok()
            .and_then(|g| g.map(|t| t.elapsed()));
        LeaderStatus {
            leading: fence.is_some(),
            epoch: fence.as_ref().map(|f| f.epoch),
            since_live_holder,
            config_matches: if fence.is_some() {
                Some(true)
            } else {
                self.inner.config_matches.lock().ok().and_then(|g| *g)
            },
            running_for: self.inner.started.elapsed(),
            ttl: self.inner.ttl,
        }
    }

    fn ttl_ms(&self) -> i64 {
        i64::try_from(self.inner.ttl.as_millis()).unwrap_or(i64::MAX)
    }

    fn saw_live_holder(&self) {
        if let Ok(mut g) = self.inner.seen_live.lock() {
            *g = Some(Instant::now());
        }
    }

    /// One renewal or takeover attempt.
    async fn tick(&self, db: &Db) -> Result<()> {
        let started = Instant::now();
        let held = self.inner.state.borrow().as_ref().map(|(f, _)| f.clone());
        let mut w = db.begin().await?;
        let now = w.now;
        let (me, info, ttl) = (&self.inner.holder, &self.inner.info, self.ttl_ms());
        // A newer controller migrated the database (a rolling upgrade): this one may misread
        // what the new version writes, so it leaves the cluster's periodic work to that
        // version, and gives the lease up if it holds it.
        let schema = crate::store::health::schema_version(w.conn()).await?;
        let fence = match held {
            _ if schema > SCHEMA_VERSION => {
                if let Some(f) = &held {
                    tracing::warn!(
                        epoch = f.epoch,
                        schema,
                        own = SCHEMA_VERSION,
                        "a newer controller migrated the database: leader lease given up, \
                         the periodic work left to controllers of that version"
                    );
                    sql::release(w.conn(), f).await?;
                }
                None
            }
            Some(f) => {
                if sql::renew(w.conn(), now, &f, info, ttl).await? {
                    Some(f)
                } else {
                    tracing::warn!(epoch = f.epoch, "the leader lease was lost");
                    sql::take(w.conn(), now, LEADER, me, info, ttl).await?
                }
            }
            None => sql::take(w.conn(), now, LEADER, me, info, ttl).await?,
        };
        let (live, matches) = match &fence {
            Some(_) => (true, Some(true)),
            None => match sql::get(w.conn(), LEADER).await? {
                Some(l) if l.expires_ms > now && !l.holder.is_empty() => (
                    true,
                    (l.version == info.version).then(|| l.config == info.config),
                ),
                _ => (false, None),
            },
        };
        w.commit().await?;
        if live {
            self.saw_live_holder();
        }
        if let Ok(mut g) = self.inner.config_matches.lock() {
            if matches == Some(false) && *g != Some(false) {
                tracing::warn!(
                    "this controller's configuration differs from the leader's \
                     (controller.toml or shared keys): not ready until it is the same"
                );
            }
            *g = matches;
        }
        let until = started + self.inner.ttl * 4 / 5;
        self.inner.state.send_if_modified(|s| {
            let before = s.as_ref().map(|(f, _)| f.epoch);
            *s = fence.clone().map(|f| (f, until));
            let after = s.as_ref().map(|(f, _)| f.epoch);
            if before != after {
                match after {
                    Some(epoch) => tracing::info!(epoch, holder = %self.inner.holder,
                        "this controller leads the cluster (leader lease taken)"),
                    None => tracing::info!("this controller no longer leads the cluster"),
                }
            }
            before != after
        });
        Ok(())
    }

    /// Gives the lease up if this controller holds it (shutdown): another takes over at once.
    pub async fn release(&self, db: &Db) {
        let Some((fence, _)) = self.inner.state.send_replace(None) else {
            return;
        };
        let r = async {
            let mut w = db.begin().await?;
            sql::release(w.conn(), &fence).await?;
            w.commit().await
        };
        match r.await {
            Ok(()) => tracing::info!(epoch = fence.epoch, "leader lease given up"),
            Err(e) => tracing::warn!(error = %e, "giving up the leader lease failed (it expires)"),
        }
    }

    /// Renews or tries to take the lease until `shutdown` turns true.
    pub fn spawn(&self, db: Db, mut shutdown: watch::Receiver<bool>) -> JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            let every = me.inner.ttl / RENEW_DIVISOR;
            loop {
                if let Err(e) = me.tick(&db).await {
                    tracing::warn!(error = %e, "leader lease renewal failed");
                }
                tokio::select! {
                    _ = tokio::time::sleep(every) => {}
                    _ = shutdown.changed() => break,
                }
            }
        })
    }
}
