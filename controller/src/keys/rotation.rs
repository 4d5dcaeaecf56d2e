//! `jit-controller keys rotate | status | retire` (docs/operations.md, "Rotation").
//!
//! - `rotate` makes a new key (private half in the state directory, mode 0600), signs its
//!   announcement with the current key and records both; every connected agent at
//!   `LEVEL_KEY_ROTATION` is sent the announcement within seconds, others when they return.
//! - `status` lists the keys and, per active agent, whether it acknowledged the new key,
//!   blocks the switch (connected, not acknowledged), will catch up (offline), or cannot
//!   follow at all (protocol level too old: re-enrol or upgrade it).
//! - `retire` switches to the new key and retires the old one once every connected agent
//!   acknowledged (or with `--force`, naming those that did not), signs the retirement with
//!   the new key, and destroys the old private half. Each step is activity-logged.

use ed25519_dalek::SigningKey;
use ed25519_dalek::pkcs8::EncodePublicKey;
use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use jitgate_api::{Operation, ResourceType};
use jitgate_proto::{
    KeyAnnouncementBody, KeyId, KeyRetirementBody, KeyStep, LEVEL_KEY_ROTATION, Signed,
};
use serde::Serialize;

use super::files::{Destroyed, KeyDir};
use super::{KeyError, parse_id};
use crate::authz::Actor;
use crate::store::activity::{self, NewActivity};
use crate::store::agents::ONLINE_WITHIN_MS;
use crate::store::controller_keys;
use crate::store::db::Db;
use crate::store::grant_keys::{self, KeyRow, KeyState};

/// The rotation commands over one state directory and its database.
pub struct Rotation {
    db: Db,
    dir: KeyDir,
}

/// One key, as `keys status` shows it (never its private half).
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct KeyView {
    pub key_id: String,
    pub state: KeyState,
    pub created_time_utc: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub switched_time_utc: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retired_time_utc: Option<String>,
    /// Whether this controller holds its private half.
    pub private_key_here: bool,
}

pub use jitgate_api::AgentKeyState;

/// One active agent, as `keys status` shows it.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentView {
    pub agent_id: String,
    pub virtual_machine: String,
    pub protocol: i64,
    pub online: bool,
    pub state: AgentKeyState,
}

/// `keys status`.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    pub keys: Vec<KeyView>,
    /// The key announced, while a rotation is under way.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rotating_to: Option<String>,
    /// Every active agent, during a rotation (empty otherwise).
    pub agents: Vec<AgentView>,
    /// Agents that block the switch (connected and not acknowledged).
    pub blocking: Vec<String>,
    /// `[keys] switch_grace_seconds`.
    pub switch_grace_seconds: u64,
    /// During a rotation: when the leader switches even though agents have not
    /// acknowledged (the announcement plus the grace).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub switch_due_time_utc: Option<String>,
    /// During a rotation: live controllers of the cluster that lack the announced key's
    /// private half; the automatic switch waits for them.
    pub controllers_lacking_key: Vec<String>,
}

/// `keys rotate`.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Rotated {
    pub key_id: String,
    pub signed_by: String,
    /// Where the private half was written.
    pub private_key_file: String,
}

/// `keys retire`.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Retired {
    pub retired_key_id: String,
    pub current_key_id: String,
    pub forced: bool,
    /// Connected agents that had not acknowledged (only with `--force`).
    pub not_acknowledged: Vec<String>,
    /// Offline agents: they are sent the rotation when they return.
    pub catching_up: Vec<String>,
    /// Agents too old to follow: they must be upgraded and re-enrolled.
    pub need_reenrolment: Vec<String>,
    /// What became of the retired key's private half here.
    pub private_key: String,
}

fn key_view(r: &KeyRow, dir: &KeyDir) -> Result<KeyView, KeyError> {
    let id = parse_id(&r.key_id)?;
    Ok(KeyView {
        key_id: r.key_id.clone(),
        state: r.state,
        created_time_utc: jitgate_api::time::format(r.created_ms),
        switched_time_utc: r.switched_ms.map(jitgate_api::time::format),
        retired_time_utc: r.retired_ms.map(jitgate_api::time::format),
        private_key_here: dir.load(id)?.is_some(),
    })
}

impl Rotation {
    pub fn new(db: Db, dir: KeyDir) -> Rotation {
        Rotation { db, dir }
    }

    async fn live(&self) -> Result<(KeyRow, Option<KeyRow>), KeyError> {
        let rows = grant_keys::live(self.db.pool()).await?;
        let current = rows
            .iter()
            .find(|r| r.state == KeyState::Current)
            .cloned()
            .ok_or(KeyError::NoCurrentKey)?;
        let next = rows.into_iter().find(|r| r.state == KeyState::Next);
        Ok((current, next))
    }

    /// The keys, the rotation under way and where its switch stands; `grace`: `[keys]
    /// switch_grace_seconds`.
    pub async fn status(&self, grace: std::time::Duration) -> Result<Status, KeyError> {
        let keys = grant_keys::all(self.db.pool())
            .await?
            .iter()
            .map(|r| key_view(r, &self.dir))
            .collect::<Result<Vec<_>, _>>()?;
        let (_, next) = self.live().await?;
        let Some(next) = next else {
            return Ok(Status {
                keys,
                rotating_to: None,
                agents: Vec::new(),
                blocking: Vec::new(),
                switch_grace_seconds: grace.as_secs(),
                switch_due_time_utc: None,
                controllers_lacking_key: Vec::new(),
            });
        };
        let due = switch_due(&self.db, &next, grace).await?;
        let agents = self.agents(&next.key_id).await?;
        let blocking = agents
            .iter()
            .filter(|a| blocks(a))
            .map(|a| a.agent_id.clone())
            .collect();
        Ok(Status {
            keys,
            rotating_to: Some(next.key_id),
            agents,
            blocking,
            switch_grace_seconds: grace.as_secs(),
            switch_due_time_utc: Some(jitgate_api::time::format(due.due_ms)),
            controllers_lacking_key: due.lacking,
        })
    }

    async fn agents(&self, next: &str) -> Result<Vec<AgentView>, KeyError> {
        agent_views(&self.db, next).await
    }

    /// Makes a new key and announces it, signed by the current one.
    pub async fn rotate(&self, actor: &Actor) -> Result<Rotated, KeyError> {
        let (current, next) = self.live().await?;
        if let Some(n) = next {
            return Err(KeyError::RotationUnderway(parse_id(&n.key_id)?));
        }
        let current_id = parse_id(&current.key_id)?;
        let signing = self
            .dir
            .load(current_id)?
            .ok_or(KeyError::MissingPrivate(current_id))?;
        let new = SigningKey::generate(&mut rand::rngs::OsRng);
        let vk = new.verifying_key();
        let id = KeyId::of(&vk);
        let pem = vk
            .to_public_key_pem(LineEnding::LF)
            .map_err(|e| KeyError::Corrupt(e.to_string()))?;
        let body = KeyAnnouncementBody {
            key_id: id,
            public_key: vk.to_bytes(),
            issued_unix_ms: jitgate_api::time::now_ms(),
        };
        let signed = Signed::sign(&body, &signing).map_err(|e| KeyError::Corrupt(e.to_string()))?;
        let announcement =
            serde_json::to_string(&signed).map_err(|e| KeyError::Corrupt(e.to_string()))?;
        let path = self.dir.create(&new)?;
        let write = async {
            let mut w = self.db.begin().await?;
            if !grant_keys::insert_next(
                &mut w,
                &id.to_string(),
                &pem,
                &current.key_id,
                &announcement,
            )
            .await?
            {
                return Ok(false);
            }
            activity::log(
                &mut w,
                NewActivity::other(
                    Operation::RotateKey,
                    ResourceType::GrantSigningKey,
                    "",
                    actor,
                )
                .details(serde_json::json!({
                    "keyId": id.to_string(),
                    "signedBy": current.key_id,
                })),
            )
            .await?;
            w.commit().await.map(|()| true)
        };
        let written = write.await;
        if !matches!(written, Ok(true)) {
            // Nothing recorded: the new key must not linger.
            let _ = self.dir.destroy(id);
        }
        match written {
            Ok(true) => {}
            // Another rotation was begun meanwhile: that one stands.
            Ok(false) => {
                let (_, next) = self.live().await?;
                return Err(match next {
                    Some(n) => KeyError::RotationUnderway(parse_id(&n.key_id)?),
                    None => KeyError::Corrupt("a rotation was begun and is gone".into()),
                });
            }
            Err(e) => return Err(e.into()),
        }
        tracing::info!(key = %id, signed_by = %current.key_id, "grant-signing key rotation begun");
        Ok(Rotated {
            key_id: id.to_string(),
            signed_by: current.key_id,
            private_key_file: path.display().to_string(),
        })
    }

    /// Switches to the announced key and retires the current one. Refused, unless `force`,
    /// while a connected agent has not acknowledged the new key, or while a live controller
    /// of the cluster lacks its private half (it could not sign anything after the switch):
    /// the same waits as the leader's switch, without the grace.
    pub async fn retire(&self, actor: &Actor, force: bool) -> Result<Retired, KeyError> {
        let (current, next) = self.live().await?;
        let next = next.ok_or(KeyError::NoRotation)?;
        let agents = self.agents(&next.key_id).await?;
        let blocking: Vec<String> = agents
            .iter()
            .filter(|a| blocks(a))
            .map(agent_name)
            .collect();
        if !blocking.is_empty() && !force {
            return Err(KeyError::Blocked {
                key: parse_id(&next.key_id)?,
                blocking,
            });
        }
        // This controller lacking it is said as such (the file to copy), not as one of many.
        let new_id = parse_id(&next.key_id)?;
        if self.dir.load(new_id)?.is_none() {
            return Err(KeyError::MissingPrivate(new_id));
        }
        // A controller publishes what it holds on its next refresh: one that was just given
        // the file (or, right after `keys rotate`, this one) is waited for that long.
        let waited_from = std::time::Instant::now();
        let lacking = loop {
            let lacking =
                controller_keys::lacking(self.db.pool(), &next.key_id, jitgate_api::time::now_ms())
                    .await?;
            if lacking.is_empty() || force || waited_from.elapsed() >= HOLDINGS_WAIT {
                break lacking;
            }
            tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        };
        if !lacking.is_empty() && !force {
            return Err(KeyError::ControllersLack {
                key: new_id,
                controllers: lacking,
            });
        }
        let not_acknowledged = if force { blocking } else { Vec::new() };
        let details = serde_json::json!({
            "forced": force,
            "notAcknowledged": not_acknowledged,
            "controllersLacking": lacking,
        });
        self.switch(
            actor,
            &current,
            &next,
            &agents,
            force,
            not_acknowledged,
            details,
        )
        .await
    }

    /// The leader's periodic check ([`crate::keys::switcher`]): switches to the announced
    /// key once every active agent (at least one) acknowledged it, or once `grace` has
    /// passed since its announcement, naming (at most [`NAMED_AT_MOST`]) and counting the
    /// agents that had not. None: no rotation under way, or not yet. Refused
    /// ([`KeyError::ControllersLack`]) while a live controller lacks the new private half.
    pub async fn switch_if_due(
        &self,
        grace: std::time::Duration,
    ) -> Result<Option<Retired>, KeyError> {
        let (current, next) = self.live().await?;
        let Some(next) = next else { return Ok(None) };
        let agents = self.agents(&next.key_id).await?;
        let pending: Vec<String> = agents
            .iter()
            .filter(|a| a.state != AgentKeyState::Acknowledged)
            .map(agent_name)
            .collect();
        let due = switch_due(&self.db, &next, grace).await?;
        let now = jitgate_api::time::now_ms();
        let reason = if pending.is_empty() && !agents.is_empty() {
            "acknowledged"
        } else if now >= due.due_ms {
            "grace"
        } else {
            return Ok(None);
        };
        // A live controller without the new private half could not sign once it signs
        // (its /readyz fails meanwhile): wait for it, or for it to leave the cluster.
        if !due.lacking.is_empty() {
            return Err(KeyError::ControllersLack {
                key: parse_id(&next.key_id)?,
                controllers: due.lacking,
            });
        }
        let count = pending.len();
        let named: Vec<String> = pending.into_iter().take(NAMED_AT_MOST).collect();
        let details = serde_json::json!({
            "automatic": true,
            "reason": reason,
            "switchGraceSeconds": grace.as_secs(),
            "notAcknowledged": named,
            "notAcknowledgedCount": count,
        });
        let actor = Actor::controller();
        self.switch(&actor, &current, &next, &agents, count > 0, named, details)
            .await
            .map(Some)
    }

    /// The switch itself: the retirement signed by the new key, the keys' states, the
    /// activity entry (`details` added to what every switch records), the old private half
    /// destroyed here (other controllers destroy theirs when they next read the keys).
    #[allow(clippy::too_many_arguments)]
    async fn switch(
        &self,
        actor: &Actor,
        current: &KeyRow,
        next: &KeyRow,
        agents: &[AgentView],
        forced: bool,
        not_acknowledged: Vec<String>,
        details: serde_json::Value,
    ) -> Result<Retired, KeyError> {
        let (old_id, new_id) = (parse_id(&current.key_id)?, parse_id(&next.key_id)?);
        let pick = |s: AgentKeyState| -> Vec<String> {
            agents
                .iter()
                .filter(|a| a.state == s)
                .map(agent_name)
                .collect()
        };
        let signing = self
            .dir
            .load(new_id)?
            .ok_or(KeyError::MissingPrivate(new_id))?;
        let body = KeyRetirementBody {
            retired: old_id,
            successor: new_id,
            issued_unix_ms: jitgate_api::time::now_ms(),
        };
        let signed = Signed::sign(&body, &signing).map_err(|e| KeyError::Corrupt(e.to_string()))?;
        let retirement =
            serde_json::to_string(&signed).map_err(|e| KeyError::Corrupt(e.to_string()))?;
        let out = Retired {
            retired_key_id: old_id.to_string(),
            current_key_id: new_id.to_string(),
            forced,
            not_acknowledged,
            catching_up: pick(AgentKeyState::WillCatchUp),
            need_reenrolment: pick(AgentKeyState::TooOld),
            private_key: String::new(),
        };
        let mut entry = serde_json::json!({
            "retiredKeyId": out.retired_key_id,
            "currentKeyId": out.current_key_id,
            "catchingUp": out.catching_up,
            "needReenrolment": out.need_reenrolment,
        });
        if let (Some(e), serde_json::Value::Object(d)) = (entry.as_object_mut(), details) {
            e.extend(d);
        }
        let mut w = self.db.begin().await?;
        grant_keys::switch(&mut w, &current.key_id, &next.key_id, &retirement).await?;
        activity::log(
            &mut w,
            NewActivity::other(
                Operation::RetireKey,
                ResourceType::GrantSigningKey,
                "",
                actor,
            )
            .details(entry),
        )
        .await?;
        w.commit().await?;
        tracing::info!(retired = %old_id, current = %new_id, forced, actor = %actor.name,
            "grant-signing key retired");
        let private_key = match self.dir.destroy(old_id)? {
            Destroyed::Deleted(p) => format!("destroyed ({})", p.display()),
            Destroyed::KeptAsCheckpointKey(p) => format!(
                "kept for now: {} still signs this state directory's activity checkpoints; the next controller to start here gives them a key of their own and destroys it; agents refuse it for grants",
                p.display()
            ),
            Destroyed::NotHere => "not held by this controller".into(),
        };
        Ok(Retired { private_key, ..out })
    }
}

/// Where the automatic switch to the announced key stands (one computation for the
/// switch itself, `GET /api/v1/keys` and `jit-controller keys status`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SwitchDue {
    /// When the grace ends (the announcement plus `[keys] switch_grace_seconds`), unix ms.
    pub due_ms: i64,
    /// Live controllers of the cluster (`controller_keys`, PostgreSQL) that do not
    /// hold the announced key's private half (yet): the switch waits for them.
    pub lacking: Vec<String>,
}

/// The switch to `next` (the announced key): due when, waiting for which controllers.
pub(crate) async fn switch_due(
    db: &Db,
    next: &KeyRow,
    grace: std::time::Duration,
) -> Result<SwitchDue, KeyError> {
    let grace_ms = i64::try_from(grace.as_millis()).unwrap_or(i64::MAX);
    let now = jitgate_api::time::now_ms();
    Ok(SwitchDue {
        due_ms: next.created_ms.saturating_add(grace_ms),
        lacking: controller_keys::lacking(db.pool(), &next.key_id, now).await?,
    })
}

/// How long `keys retire` waits for controllers lacking the announced key to publish that
/// they hold it: two of their refreshes and a margin.
const HOLDINGS_WAIT: std::time::Duration = super::ring::REFRESH_EVERY
    .saturating_mul(2)
    .saturating_add(std::time::Duration::from_secs(1));

/// At most this many agents are named in the activity entry of an automatic switch (all
/// are counted).
pub const NAMED_AT_MOST: usize = 20;

/// How an agent is named in answers and activity entries.
fn agent_name(a: &AgentView) -> String {
    format!("{} (VM {})", a.agent_id, a.virtual_machine)
}

/// Every active agent and where it stands toward the announced key `next`.
pub(crate) async fn agent_views(db: &Db, next: &str) -> Result<Vec<AgentView>, KeyError> {
    let acked: std::collections::HashSet<String> = grant_keys::acks_for_key(db.pool(), next)
        .await?
        .into_iter()
        .filter(|(_, s)| s == KeyStep::Announced.as_str())
        .map(|(a, _)| a)
        .collect();
    let now = jitgate_api::time::now_ms();
    Ok(grant_keys::active_agents(db.pool())
        .await?
        .into_iter()
        .map(|a| {
            let online = a.last_seen_ms.is_some_and(|l| now - l <= ONLINE_WITHIN_MS);
            let state = if acked.contains(&a.id) {
                AgentKeyState::Acknowledged
            } else if a.protocol < i64::from(LEVEL_KEY_ROTATION) {
                AgentKeyState::TooOld
            } else if online {
                AgentKeyState::Waiting
            } else {
                AgentKeyState::WillCatchUp
            };
            AgentView {
                agent_id: a.id,
                virtual_machine: a.vm,
                protocol: a.protocol,
                online,
                state,
            }
        })
        .collect())
}

/// Connected and not acknowledged (a connected agent too old to follow blocks as well).
fn blocks(a: &AgentView) -> bool {
    a.online && matches!(a.state, AgentKeyState::Waiting | AgentKeyState::TooOld)
}
