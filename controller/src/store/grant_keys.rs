//! The `grant_keys` and `grant_key_acks` tables: the grant-signing keys the cluster has used
//! (public halves only), their state, the signed rotation messages replayed to agents that
//! were offline, and which agent answered which step (docs/operations.md, "Rotation").

use sqlx::{Any, Executor};

use crate::error::{Error, Result};
use crate::store::write::WriteTx;

jitgate_api::wire_enum! {
    /// Where a key is in its life.
    pub enum KeyState("grant key state") {
        /// Signs grants, revocations and policies.
        Current = "current",
        /// Announced to agents; becomes current when `keys retire` retires the current one.
        Next = "next",
        /// Refused by agents that were told; its private half is deleted.
        Retired = "retired",
    }
}

/// One key.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct KeyRow {
    pub key_id: String,
    pub public_pem: String,
    #[sqlx(try_from = "String")]
    pub state: KeyState,
    pub predecessor: Option<String>,
    pub created_ms: i64,
    pub switched_ms: Option<i64>,
    pub retired_ms: Option<i64>,
    /// `Signed<KeyAnnouncementBody>` as JSON, signed by the predecessor.
    pub announcement: Option<String>,
    /// `Signed<KeyRetirementBody>` as JSON, retiring the predecessor, signed by this key.
    pub retirement: Option<String>,
}

const COLUMNS: &str = "key_id, public_pem, state, predecessor, created_ms, switched_ms, \
     retired_ms, announcement, retirement";

/// Every key, oldest first.
pub async fn all(ex: impl Executor<'_, Database = Any>) -> Result<Vec<KeyRow>> {
    Ok(sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM grant_keys ORDER BY created_ms, key_id"
    ))
    .fetch_all(ex)
    .await?)
}

/// The keys not retired (the current one, and the next one during a rotation).
pub async fn live(ex: impl Executor<'_, Database = Any>) -> Result<Vec<KeyRow>> {
    Ok(sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM grant_keys WHERE state <> $1 ORDER BY created_ms, key_id"
    ))
    .bind(KeyState::Retired.as_str())
    .fetch_all(ex)
    .await?)
}

/// The current key's public half (SPKI PEM), as enrolment hands it out.
pub async fn current_pem(ex: impl Executor<'_, Database = Any>) -> Result<Option<String>> {
    Ok(
        sqlx::query_scalar("SELECT public_pem FROM grant_keys WHERE state = $1")
            .bind(KeyState::Current.as_str())
            .fetch_optional(ex)
            .await?,
    )
}

/// The first key: the one `jit-controller init` made, as current, if there is no key yet.
pub async fn seed(w: &mut WriteTx, key_id: &str, public_pem: &str) -> Result<bool> {
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM grant_keys")
        .fetch_one(w.conn())
        .await?;
    if n > 0 {
        return Ok(false);
    }
    let now = w.now;
    sqlx::query(
        "INSERT INTO grant_keys (key_id, public_pem, state, created_ms, switched_ms) \
         VALUES ($1, $2, $3, $4, $4) ON CONFLICT (key_id) DO NOTHING",
    )
    .bind(key_id)
    .bind(public_pem)
    .bind(KeyState::Current.as_str())
    .bind(now)
    .execute(w.conn())
    .await?;
    Ok(true)
}

/// A new key announced by `predecessor` (the current key). False, nothing written, when
/// another key is announced already: at most one is (a unique index, migration 28), so two
/// rotations begun at the same instant, on one controller or two, cannot both succeed.
pub async fn insert_next(
    w: &mut WriteTx,
    key_id: &str,
    public_pem: &str,
    predecessor: &str,
    announcement: &str,
) -> Result<bool> {
    let now = w.now;
    let r = sqlx::query(
        "INSERT INTO grant_keys (key_id, public_pem, state, predecessor, created_ms, announcement) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(key_id)
    .bind(public_pem)
    .bind(KeyState::Next.as_str())
    .bind(predecessor)
    .bind(now)
    .bind(announcement)
    .execute(w.conn())
    .await;
    match r {
        Ok(_) => Ok(true),
        Err(e) => {
            let e = Error::from(e);
            if e.is_unique_violation() {
                Ok(false)
            } else {
                Err(e)
            }
        }
    }
}

/// The switch: `next` becomes current with its retirement message, `current` is retired.
/// Fails (nothing written) unless both are still in those states.
pub async fn switch(w: &mut WriteTx, current: &str, next: &str, retirement: &str) -> Result<()> {
    let now = w.now;
    let a = sqlx::query(
        "UPDATE grant_keys SET state = $1, retired_ms = $2 WHERE key_id = $3 AND state = $4",
    )
    .bind(KeyState::Retired.as_str())
    .bind(now)
    .bind(current)
    .bind(KeyState::Current.as_str())
    .execute(w.conn())
    .await?
    .rows_affected();
    let b = sqlx::query(
        "UPDATE grant_keys SET state = $1, switched_ms = $2, retirement = $3 \
         WHERE key_id = $4 AND state = $5",
    )
    .bind(KeyState::Current.as_str())
    .bind(now)
    .bind(retirement)
    .bind(next)
    .bind(KeyState::Next.as_str())
    .execute(w.conn())
    .await?
    .rows_affected();
    if a != 1 || b != 1 {
        return Err(Error::Internal(
            "the grant-signing keys changed meanwhile (another rotation?)".into(),
        ));
    }
    Ok(())
}

/// An agent's answer to a rotation step (idempotent).
pub async fn ack(w: &mut WriteTx, agent: &str, key_id: &str, step: &str) -> Result<()> {
    let now = w.now;
    sqlx::query(
        "INSERT INTO grant_key_acks (agent_id, key_id, step, time_ms) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (agent_id, key_id, step) DO NOTHING",
    )
    .bind(agent)
    .bind(key_id)
    .bind(step)
    .bind(now)
    .execute(w.conn())
    .await?;
    Ok(())
}

/// The steps (key id, step) an agent answered.
pub async fn acks_of(
    ex: impl Executor<'_, Database = Any>,
    agent: &str,
) -> Result<Vec<(String, String)>> {
    Ok(
        sqlx::query_as("SELECT key_id, step FROM grant_key_acks WHERE agent_id = $1")
            .bind(agent)
            .fetch_all(ex)
            .await?,
    )
}

/// Every answer to the steps of one key: (agent id, step).
pub async fn acks_for_key(
    ex: impl Executor<'_, Database = Any>,
    key_id: &str,
) -> Result<Vec<(String, String)>> {
    Ok(
        sqlx::query_as("SELECT agent_id, step FROM grant_key_acks WHERE key_id = $1")
            .bind(key_id)
            .fetch_all(ex)
            .await?,
    )
}

/// An active agent as a rotation sees it.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct AgentLevel {
    pub id: String,
    pub vm: String,
    pub protocol: i64,
    pub last_seen_ms: Option<i64>,
}

/// Every active agent with its protocol level and when it was last heard from.
pub async fn active_agents(ex: impl Executor<'_, Database = Any>) -> Result<Vec<AgentLevel>> {
    Ok(sqlx::query_as(
        "SELECT id, vm, protocol, last_seen_ms FROM agents WHERE status = $1 ORDER BY vm, id",
    )
    .bind(jitgate_api::AgentStatus::Active.as_str())
    .fetch_all(ex)
    .await?)
}
