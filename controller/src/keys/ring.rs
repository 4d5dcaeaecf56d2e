//! The running controller's grant-signing keys, read from the database every
//! [`REFRESH_EVERY`] (a rotation is made by `jit-controller keys` in another process, or on
//! another controller): the key that signs now, the rotation messages agents are sent, and
//! which private halves this controller lacks (`/readyz` fails then). A retired key's
//! private half found here is destroyed.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use ed25519_dalek::SigningKey;
use jitgate_proto::{ControllerMsg, KeyId, KeyStep, Signed};
use tokio::sync::watch;

use super::files::{Destroyed, KeyDir};
use super::{KeyError, id_of_pem, parse_id};
use crate::store::controller_keys;
use crate::store::db::Db;
use crate::store::grant_keys::{self, KeyRow, KeyState};

/// How often the keys are read again.
pub const REFRESH_EVERY: Duration = Duration::from_secs(2);

/// One rotation message, as agents at `LEVEL_KEY_ROTATION` are sent it until they answer.
#[derive(Clone, Debug)]
pub struct Step {
    /// The announced key (`Announced`) or the retired one (`Retired`).
    pub key_id: KeyId,
    pub step: KeyStep,
    pub msg: ControllerMsg,
    /// Sent only to agents enrolled before this time (a retired key's own rotation: an agent
    /// enrolled later was handed that key or a later one, and could not verify an
    /// announcement its predecessor signed); `None`: to every agent.
    pub enrolled_before: Option<i64>,
}

impl Step {
    /// Whether an agent enrolled at `enrolled_ms` is sent this step.
    pub fn for_agent_enrolled_at(&self, enrolled_ms: i64) -> bool {
        self.enrolled_before.is_none_or(|t| enrolled_ms < t)
    }
}

/// The keys as last read.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// The key that signs, when this controller holds its private half.
    pub signer: Option<(KeyId, Arc<SigningKey>)>,
    /// The current key's id and public half (SPKI PEM), as enrolment hands it out.
    pub current: Option<(KeyId, String)>,
    /// The key announced, during a rotation.
    pub next: Option<KeyId>,
    /// Keys in use (current, next) whose private half this controller does not hold.
    pub missing: Vec<KeyId>,
    /// What agents are sent on connect and when it changes, oldest rotation first: every
    /// rotation that switched (an agent offline across several follows them all, each
    /// announcement signed by the key the one before pinned), then the announcement of the
    /// one under way.
    pub steps: Vec<Step>,
    /// Whether the keys were read at all.
    pub loaded: bool,
}

impl Snapshot {
    /// The ids of the keys in use (current, next) whose private half this controller holds.
    pub fn held(&self) -> Vec<String> {
        self.current
            .as_ref()
            .map(|(id, _)| *id)
            .into_iter()
            .chain(self.next)
            .filter(|id| !self.missing.contains(id))
            .map(|id| id.to_string())
            .collect()
    }
}

#[derive(Clone)]
pub struct Ring {
    inner: Arc<Inner>,
}

struct Inner {
    dir: Option<KeyDir>,
    snap: RwLock<Arc<Snapshot>>,
    /// Bumped whenever the snapshot changes.
    changed: watch::Sender<u64>,
    /// (key id, state) of every key, and the missing halves, as last built.
    shape: std::sync::Mutex<Vec<String>>,
}

impl Default for Ring {
    fn default() -> Self {
        Ring::new(None)
    }
}

fn parse_signed<T: jitgate_proto::signed::Body>(text: &str) -> Result<Signed<T>, KeyError> {
    serde_json::from_str(text).map_err(|e| KeyError::Corrupt(e.to_string()))
}

impl Ring {
    /// `dir`: where the private halves are; None where nothing is signed.
    pub fn new(dir: Option<KeyDir>) -> Ring {
        Ring {
            inner: Arc::new(Inner {
                dir,
                snap: RwLock::new(Arc::new(Snapshot::default())),
                changed: watch::channel(0).0,
                shape: std::sync::Mutex::new(Vec::new()),
            }),
        }
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.inner
            .snap
            .read()
            .map(|s| s.clone())
            .unwrap_or_default()
    }

    /// Changes whenever the keys do.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.inner.changed.subscribe()
    }

    /// The key that signs now.
    pub fn signer(&self) -> Result<Arc<SigningKey>, KeyError> {
        let s = self.snapshot();
        match (&s.signer, &s.current) {
            (Some((_, k)), _) => Ok(k.clone()),
            (None, Some((id, _))) => Err(KeyError::MissingPrivate(*id)),
            (None, None) => Err(KeyError::NoCurrentKey),
        }
    }

    /// Records the key `init` made as the current one if the database has no key yet.
    pub async fn seed(&self, db: &Db, public_pem: &str) -> Result<(), KeyError> {
        let (id, _) = id_of_pem(public_pem)?;
        let mut w = db.begin().await?;
        let seeded = grant_keys::seed(&mut w, &id.to_string(), public_pem).await?;
        w.commit().await?;
        if seeded {
            tracing::info!(key = %id, "grant-signing key recorded as the current key");
        }
        Ok(())
    }

    /// Reads the keys; rebuilds the snapshot when they changed.
    pub async fn refresh(&self, db: &Db) -> Result<(), KeyError> {
        let rows = grant_keys::all(db.pool()).await?;
        let mut shape: Vec<String> = rows
            .iter()
            .map(|r| format!("{}:{}", r.key_id, r.state))
            .collect();
        let mut missing = Vec::new();
        let mut signer = None;
        let mut current = None;
        let mut next = None;
        // The rows come oldest first; a rotation's steps are its key's (announced, then its
        // predecessor retired), so past, current and announced keys' steps follow in order.
        let (mut past, mut now, mut announced) = (Vec::new(), Vec::new(), Vec::new());
        for r in &rows {
            let id = parse_id(&r.key_id)?;
            match r.state {
                KeyState::Retired => {
                    self.destroy_retired(id);
                    // Its own rotation, for agents enrolled before it was retired in turn
                    // (later ones were handed its successor or a later key).
                    if let Some(t) = r.retired_ms {
                        past.extend(switch_steps(r, id, Some(t))?);
                    }
                    continue;
                }
                KeyState::Current => {
                    current = Some((id, r.public_pem.clone()));
                    now = switch_steps(r, id, None)?;
                }
                KeyState::Next => {
                    next = Some(id);
                    if let Some(a) = &r.announcement {
                        announced.push(Step {
                            key_id: id,
                            step: KeyStep::Announced,
                            msg: ControllerMsg::KeyAnnouncement(parse_signed(a)?),
                            enrolled_before: None,
                        });
                    }
                }
            }
            let private = match &self.inner.dir {
                Some(d) => d.load(id)?,
                None => None,
            };
            match (private, r.state) {
                (Some(k), KeyState::Current) => signer = Some((id, Arc::new(k))),
                (Some(_), _) => {}
                (None, _) => missing.push(id),
            }
        }
        shape.extend(missing.iter().map(|m| format!("missing:{m}")));
        let same = self
            .inner
            .shape
            .lock()
            .map(|mut s| {
                let same = *s == shape && !shape.is_empty();
                *s = shape;
                same
            })
            .unwrap_or(false);
        if same && self.snapshot().loaded {
            return Ok(());
        }
        for m in &missing {
            tracing::error!(key = %m, "this controller lacks the private half of a grant-signing key in use; /readyz fails until keys/grant-{m}.key is copied here");
        }
        past.extend(now);
        past.extend(announced);
        let snap = Snapshot {
            signer,
            current,
            next,
            missing,
            steps: past,
            loaded: true,
        };
        if let Ok(mut s) = self.inner.snap.write() {
            *s = Arc::new(snap);
        }
        self.inner.changed.send_modify(|g| *g += 1);
        Ok(())
    }

    fn destroy_retired(&self, id: KeyId) {
        let Some(d) = &self.inner.dir else { return };
        if !d.may_destroy(id) {
            return;
        }
        match d.destroy(id) {
            Ok(Destroyed::Deleted(p)) => {
                tracing::info!(key = %id, path = %p.display(), "retired grant-signing key destroyed")
            }
            Ok(_) => {}
            Err(e) => {
                tracing::error!(key = %id, error = %e, "cannot destroy a retired grant-signing key")
            }
        }
    }

    /// Refreshes every [`REFRESH_EVERY`] until `shutdown`. `holder`: this controller's name
    /// in a cluster (PostgreSQL); then it also publishes which keys in use it holds
    /// (`controller_keys`, valid [`HOLDING_TTL_MS`]; written when they change and every
    /// [`HOLDING_REWRITE_MS`]), which the automatic switch waits for, and removes its row when
    /// it stops.
    pub fn spawn(
        &self,
        db: Db,
        holder: Option<String>,
        mut shutdown: watch::Receiver<bool>,
    ) -> tokio::task::JoinHandle<()> {
        let ring = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(REFRESH_EVERY);
            // What this controller last published, and when.
            let mut published: Option<(Vec<String>, i64)> = None;
            loop {
                tokio::select! {
                    _ = tick.tick() => {
                        if let Err(e) = ring.refresh(&db).await {
                            tracing::warn!(error = %e, "cannot read the grant-signing keys");
                            continue;
                        }
                        let Some(me) = &holder else { continue };
                        let held = ring.snapshot().held();
                        let now = jitgate_api::time::now_ms();
                        let due = published.as_ref().is_none_or(|(h, at)| {
                            *h != held || now - at >= HOLDING_REWRITE_MS
                        });
                        if !due {
                            continue;
                        }
                        match controller_keys::publish(db.pool(), me, &held, now + HOLDING_TTL_MS).await {
                            Ok(()) => published = Some((held, now)),
                            Err(e) => tracing::warn!(error = %e, "cannot publish the grant-signing keys this controller holds"),
                        }
                    }
                    _ = shutdown.changed() => break,
                }
            }
            if let Some(me) = &holder
                && let Err(e) =
                    controller_keys::remove(db.pool(), me, jitgate_api::time::now_ms()).await
            {
                tracing::warn!(error = %e, "cannot remove this controller's key holdings");
            }
        })
    }
}

/// How long a controller's published key holdings count (`controller_keys`): a controller
/// that died is no longer waited for after this.
pub const HOLDING_TTL_MS: i64 = 15_000;
/// A controller's holdings are written again this often even when unchanged.
pub const HOLDING_REWRITE_MS: i64 = 5_000;

/// A key's own rotation: its announcement (signed by its predecessor) and the predecessor's
/// retirement (signed by it), for agents that were offline (those enrolled before
/// `enrolled_before`, if set). None for the key `init` made (no predecessor).
fn switch_steps(
    r: &KeyRow,
    id: KeyId,
    enrolled_before: Option<i64>,
) -> Result<Vec<Step>, KeyError> {
    let (Some(a), Some(t), Some(p)) = (&r.announcement, &r.retirement, &r.predecessor) else {
        return Ok(Vec::new());
    };
    Ok(vec![
        Step {
            key_id: id,
            step: KeyStep::Announced,
            msg: ControllerMsg::KeyAnnouncement(parse_signed(a)?),
            enrolled_before,
        },
        Step {
            key_id: parse_id(p)?,
            step: KeyStep::Retired,
            msg: ControllerMsg::KeyRetirement(parse_signed(t)?),
            enrolled_before,
        },
    ])
}
