//! The `sessions` table (people signed in with OpenID Connect; only the SHA-256 of each
//! session credential is stored, as for API tokens) and `oidc_used_callbacks` (each sign-in
//! callback is redeemed once, across controllers).

use jitgate_api::{GrantView, SessionEndReason};
use sqlx::{Any, Executor};

use crate::error::{Error, Result};
use crate::store::write::WriteTx;

/// A session as stored.
#[derive(Clone, Debug)]
pub struct SessionRow {
    pub id: String,
    pub principal: String,
    pub display_name: String,
    pub email: Option<String>,
    pub groups: jitgate_oidc::Groups,
    pub roles: Vec<GrantView>,
    /// `ClientKind::as_str`: cli | portal.
    pub client: String,
    pub refresh_sealed: Option<String>,
    pub created_ms: i64,
    pub expires_ms: i64,
    pub refresh_due_ms: i64,
    pub source_address: String,
    pub ended_ms: Option<i64>,
    pub end_reason: Option<SessionEndReason>,
}

#[derive(sqlx::FromRow)]
struct Raw {
    id: String,
    principal: String,
    display_name: String,
    email: Option<String>,
    groups: String,
    roles: String,
    client: String,
    refresh_sealed: Option<String>,
    created_ms: i64,
    expires_ms: i64,
    refresh_due_ms: i64,
    source_address: String,
    ended_ms: Option<i64>,
    end_reason: Option<String>,
}

impl TryFrom<Raw> for SessionRow {
    type Error = Error;
    fn try_from(r: Raw) -> Result<SessionRow> {
        let end_reason = match r.end_reason {
            Some(s) => Some(s.parse::<SessionEndReason>().map_err(Error::corrupt)?),
            None => None,
        };
        Ok(SessionRow {
            groups: serde_json::from_str(&r.groups)?,
            roles: serde_json::from_str(&r.roles)?,
            id: r.id,
            principal: r.principal,
            display_name: r.display_name,
            email: r.email,
            client: r.client,
            refresh_sealed: r.refresh_sealed,
            created_ms: r.created_ms,
            expires_ms: r.expires_ms,
            refresh_due_ms: r.refresh_due_ms,
            source_address: r.source_address,
            ended_ms: r.ended_ms,
            end_reason,
        })
    }
}

const COLUMNS: &str = "id, principal, display_name, email, groups, roles, client, \
    refresh_sealed, created_ms, expires_ms, refresh_due_ms, source_address, ended_ms, end_reason";

fn rows(raw: Vec<Raw>) -> Result<Vec<SessionRow>> {
    raw.into_iter().map(SessionRow::try_from).collect()
}

/// The session with this credential hash (ended ones too).
pub async fn by_hash(
    ex: impl Executor<'_, Database = Any>,
    hash: &str,
) -> Result<Option<SessionRow>> {
    let r: Option<Raw> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM sessions WHERE token_hash = $1"
    ))
    .bind(hash)
    .fetch_optional(ex)
    .await?;
    r.map(SessionRow::try_from).transpose()
}

pub async fn by_id(ex: impl Executor<'_, Database = Any>, id: &str) -> Result<Option<SessionRow>> {
    let r: Option<Raw> = sqlx::query_as(&format!("SELECT {COLUMNS} FROM sessions WHERE id = $1"))
        .bind(id)
        .fetch_optional(ex)
        .await?;
    r.map(SessionRow::try_from).transpose()
}

/// Sessions, newest first: only those not ended and not past their cap at `now`, or all.
pub async fn list(
    ex: impl Executor<'_, Database = Any>,
    active_at: Option<i64>,
) -> Result<Vec<SessionRow>> {
    let raw: Vec<Raw> = match active_at {
        Some(now) => {
            sqlx::query_as(&format!(
                "SELECT {COLUMNS} FROM sessions WHERE ended_ms IS NULL AND expires_ms > $1 \
                 ORDER BY created_ms DESC, id"
            ))
            .bind(now)
            .fetch_all(ex)
            .await?
        }
        None => {
            sqlx::query_as(&format!(
                "SELECT {COLUMNS} FROM sessions ORDER BY created_ms DESC, id"
            ))
            .fetch_all(ex)
            .await?
        }
    };
    rows(raw)
}

/// Open sessions whose refresh is due at `now`, oldest due first.
pub async fn due(
    ex: impl Executor<'_, Database = Any>,
    now: i64,
    limit: i64,
) -> Result<Vec<SessionRow>> {
    let raw: Vec<Raw> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM sessions WHERE ended_ms IS NULL AND refresh_due_ms <= $1 \
         ORDER BY refresh_due_ms, id LIMIT $2"
    ))
    .bind(now)
    .bind(limit)
    .fetch_all(ex)
    .await?;
    rows(raw)
}

/// Stores a new session (created now) under the credential's hash.
pub async fn insert(w: &mut WriteTx, s: &SessionRow, hash: &str) -> Result<()> {
    sqlx::query(&format!(
        "INSERT INTO sessions (token_hash, {COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, \
         $9, $10, $11, $12, $13, $14, $15)"
    ))
    .bind(hash)
    .bind(&s.id)
    .bind(&s.principal)
    .bind(&s.display_name)
    .bind(s.email.as_deref())
    .bind(serde_json::to_string(&s.groups)?)
    .bind(serde_json::to_string(&s.roles)?)
    .bind(&s.client)
    .bind(s.refresh_sealed.as_deref())
    .bind(s.created_ms)
    .bind(s.expires_ms)
    .bind(s.refresh_due_ms)
    .bind(&s.source_address)
    .bind(s.ended_ms)
    .bind(s.end_reason.as_ref().map(|r| r.as_str().to_string()))
    .execute(w.conn())
    .await?;
    Ok(())
}

/// Ends an open session; false if it had already ended (or does not exist).
pub async fn end(w: &mut WriteTx, id: &str, reason: &SessionEndReason) -> Result<bool> {
    let now = w.now;
    let r = sqlx::query(
        "UPDATE sessions SET ended_ms = $1, end_reason = $2, refresh_sealed = NULL \
         WHERE id = $3 AND ended_ms IS NULL",
    )
    .bind(now)
    .bind(reason.as_str())
    .bind(id)
    .execute(w.conn())
    .await?;
    Ok(r.rows_affected() == 1)
}

/// A refresh succeeded: the groups and roles it read, the (possibly rotated) sealed refresh
/// token, and the next due time. False if the session ended meanwhile.
pub async fn refreshed(
    w: &mut WriteTx,
    s: &SessionRow,
    refresh_sealed: Option<&str>,
    next_due_ms: i64,
) -> Result<bool> {
    let r = sqlx::query(
        "UPDATE sessions SET display_name = $1, email = $2, groups = $3, roles = $4, \
         refresh_sealed = $5, refresh_due_ms = $6 WHERE id = $7 AND ended_ms IS NULL",
    )
    .bind(&s.display_name)
    .bind(s.email.as_deref())
    .bind(serde_json::to_string(&s.groups)?)
    .bind(serde_json::to_string(&s.roles)?)
    .bind(refresh_sealed)
    .bind(next_due_ms)
    .bind(&s.id)
    .execute(w.conn())
    .await?;
    Ok(r.rows_affected() == 1)
}

/// Records a sign-in callback as used: true the first time `key` is presented, false on a
/// replay. Expired records are deleted on the way.
pub async fn first_callback_use(w: &mut WriteTx, key: &str, keep_until_ms: i64) -> Result<bool> {
    let now = w.now;
    sqlx::query("DELETE FROM oidc_used_callbacks WHERE keep_until < $1")
        .bind(now)
        .execute(w.conn())
        .await?;
    let r = sqlx::query(
        "INSERT INTO oidc_used_callbacks (replay_key, keep_until) VALUES ($1, $2) \
         ON CONFLICT (replay_key) DO NOTHING",
    )
    .bind(key)
    .bind(keep_until_ms)
    .execute(w.conn())
    .await?;
    Ok(r.rows_affected() == 1)
}

/// Claims a due session for one refresh: moves its due time from `seen_due_ms` to
/// `until_ms`; false if it changed meanwhile (another controller claimed it) or ended.
pub async fn claim_refresh(
    w: &mut WriteTx,
    id: &str,
    seen_due_ms: i64,
    until_ms: i64,
) -> Result<bool> {
    let r = sqlx::query(
        "UPDATE sessions SET refresh_due_ms = $1 WHERE id = $2 AND refresh_due_ms = $3 \
         AND ended_ms IS NULL",
    )
    .bind(until_ms)
    .bind(id)
    .bind(seen_due_ms)
    .execute(w.conn())
    .await?;
    Ok(r.rows_affected() == 1)
}

/// The address each of `principals` (`oidc:` ids) last signed in with, as (principal,
/// address): where email notifications reach people who sign in with the identity provider.
pub async fn emails(
    conn: &mut sqlx::AnyConnection,
    principals: &[&str],
) -> Result<Vec<(String, String)>> {
    if principals.is_empty() {
        return Ok(Vec::new());
    }
    let marks: Vec<String> = (1..=principals.len()).map(|i| format!("${i}")).collect();
    let sql = format!(
        "SELECT principal, email FROM sessions WHERE email IS NOT NULL \
         AND principal IN ({}) ORDER BY created_ms DESC",
        marks.join(", ")
    );
    let mut q = sqlx::query_as::<_, (String, String)>(&sql);
    for p in principals {
        q = q.bind(*p);
    }
    let mut out: Vec<(String, String)> = Vec::new();
    for (principal, email) in q.fetch_all(conn).await? {
        if !out.iter().any(|(p, _)| *p == principal) {
            out.push((principal, email));
        }
    }
    Ok(out)
}
