//! Agent certificates: renewal (the agent's current certificate in `agents`, the ones it
//! replaced in `agent_certs`, which keep identifying it until they expire) and refused
//! renewals (`agent_cert_refusals`, one activity entry per agent, kind and window).

use jitgate_api::AgentStatus;
use sqlx::{Any, Executor};

use crate::error::Result;
use crate::store::write::WriteTx;

/// A certificate renewed for an agent (same key, same id).
pub struct RenewedCert<'a> {
    pub fingerprint: &'a str,
    pub serial: &'a str,
    pub cert_pem: &'a str,
    pub not_after_ms: i64,
}

/// What [`renew`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Renewal {
    Renewed,
    /// The agent is not active (revoked, or unknown): a revoked agent never renews.
    NotActive,
    /// Its last renewal (at `last_ms`) is younger than the limit window.
    TooSoon {
        last_ms: i64,
    },
}

/// When the agent's certificate was last renewed (None: never, or no such agent).
pub async fn renewed_ms(ex: impl Executor<'_, Database = Any>, id: &str) -> Result<Option<i64>> {
    Ok(
        sqlx::query_scalar::<_, Option<i64>>("SELECT cert_renewed_ms FROM agents WHERE id = $1")
            .bind(id)
            .fetch_optional(ex)
            .await?
            .flatten(),
    )
}

/// Makes `new` the agent's current certificate, keeping the one it replaces in
/// `agent_certs` (it still identifies the agent until it expires). Refused unless the agent
/// is active, and while its last renewal is younger than `min_interval_ms` (checked in the
/// update itself: of two renewals at once, on one controller or two, one wins). On a
/// refusal the caller drops the transaction: nothing is kept.
pub async fn renew(
    w: &mut WriteTx,
    id: &str,
    new: &RenewedCert<'_>,
    min_interval_ms: i64,
) -> Result<Renewal> {
    let now = w.now;
    type Row = (String, String, String, String, Option<i64>);
    let row: Option<Row> = sqlx::query_as(
        "SELECT status, cert_fingerprint, cert_serial, cert_pem, cert_renewed_ms FROM agents \
         WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(w.conn())
    .await?;
    let Some((status, fp, serial, pem, last)) = row else {
        return Ok(Renewal::NotActive);
    };
    if status != AgentStatus::Active.as_str() {
        return Ok(Renewal::NotActive);
    }
    if let Some(last_ms) = last
        && now - last_ms < min_interval_ms
    {
        return Ok(Renewal::TooSoon { last_ms });
    }
    sqlx::query(
        "INSERT INTO agent_certs (fingerprint, agent_id, serial, replaced_ms, cert_pem) \
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (fingerprint) DO NOTHING",
    )
    .bind(&fp)
    .bind(id)
    .bind(&serial)
    .bind(now)
    .bind(&pem)
    .execute(w.conn())
    .await?;
    let updated = sqlx::query(
        "UPDATE agents SET cert_fingerprint = $1, cert_serial = $2, cert_pem = $3, \
         cert_not_after_ms = $4, cert_renewed_ms = $5 WHERE id = $6 AND status = $7 \
         AND cert_fingerprint = $8 AND (cert_renewed_ms IS NULL OR cert_renewed_ms <= $9)",
    )
    .bind(new.fingerprint)
    .bind(new.serial)
    .bind(new.cert_pem)
    .bind(new.not_after_ms)
    .bind(now)
    .bind(id)
    .bind(AgentStatus::Active.as_str())
    .bind(&fp)
    .bind(now.saturating_sub(min_interval_ms))
    .execute(w.conn())
    .await?
    .rows_affected();
    if updated == 1 {
        Ok(Renewal::Renewed)
    } else {
        // Another renewal got there first.
        Ok(Renewal::TooSoon { last_ms: now })
    }
}

/// Whether a renewal refusal of `kind` (`fleet::renew::RefusalKind`) is to be written to the
/// activity log now: true, and noted, at most once per agent, kind and `window_ms`
/// (cluster-wide: the row decides; of two controllers at once, one writes).
pub async fn note_refusal(w: &mut WriteTx, id: &str, kind: &str, window_ms: i64) -> Result<bool> {
    let now = w.now;
    let n = sqlx::query(
        "INSERT INTO agent_cert_refusals (agent_id, kind, logged_ms) VALUES ($1, $2, $3) \
         ON CONFLICT (agent_id, kind) DO UPDATE SET logged_ms = excluded.logged_ms \
         WHERE agent_cert_refusals.logged_ms <= $4",
    )
    .bind(id)
    .bind(kind)
    .bind(now)
    .bind(now.saturating_sub(window_ms))
    .execute(w.conn())
    .await?
    .rows_affected();
    Ok(n == 1)
}
