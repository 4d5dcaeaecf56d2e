//! Break-glass grants agents made on their hosts and reported (`agent_local_grants`): each
//! recorded once, with its connection limit where the agent reported one.

use jitgate_common::MaxConnections;

use crate::error::Result;
use crate::store::write::WriteTx;

/// Records a reported local grant once; true if it was new.
pub async fn insert(
    w: &mut WriteTx,
    agent: &str,
    grant: &str,
    max_connections: Option<MaxConnections>,
) -> Result<bool> {
    let now = w.now;
    let n = sqlx::query(
        "INSERT INTO agent_local_grants (agent_id, grant_id, reported_ms, max_connections) \
         VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
    )
    .bind(agent)
    .bind(grant)
    .bind(now)
    .bind(max_connections.map(|m| i64::from(m.get())))
    .execute(w.conn())
    .await?
    .rows_affected();
    Ok(n > 0)
}
