//! The `agent_audit` table: every record an agent delivers, verbatim, once per (agent, record
//! id), with its kind, time and grant id taken out for the views to filter on.

use jitgate_proto::message::AuditRecord;
use sqlx::{Any, Executor};

use crate::error::{Error, Result};
use crate::store::write::WriteTx;

/// The columns the views filter on, taken from a record's JSON when it is stored. A record
/// that does not parse is still stored (it is the agent's evidence), with these left empty.
#[derive(Debug, Default, PartialEq)]
pub struct RecordFields {
    pub kind: Option<String>,
    pub at_ms: Option<i64>,
    pub grant_id: Option<String>,
}

impl RecordFields {
    pub fn of(line: &str) -> RecordFields {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            return RecordFields::default();
        };
        let text = |k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_string);
        RecordFields {
            kind: text("kind"),
            at_ms: text("time").and_then(|t| jitgate_api::time::parse(&t).ok()),
            grant_id: text("grantId"),
        }
    }
}

/// Stores records (each once per (agent, id)).
pub async fn insert(w: &mut WriteTx, agent: &str, records: &[AuditRecord]) -> Result<()> {
    let now = w.now;
    for r in records {
        let seq = i64::try_from(r.seq)
            .map_err(|_| Error::Corrupt(format!("agent {agent} sent audit seq {}", r.seq)))?;
        let f = RecordFields::of(&r.line);
        sqlx::query(
            "INSERT INTO agent_audit (agent_id, id, seq, line, received_ms, kind, at_ms, grant_id) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT DO NOTHING",
        )
        .bind(agent)
        .bind(&r.id)
        .bind(seq)
        .bind(&r.line)
        .bind(now)
        .bind(f.kind)
        .bind(f.at_ms)
        .bind(f.grant_id)
        .execute(w.conn())
        .await?;
    }
    Ok(())
}

/// The highest seq up to which every seq after `acked` is stored.
pub async fn contiguous_from(pool: &sqlx::AnyPool, agent: &str, acked: u64) -> Result<u64> {
    let mut up_to = acked;
    loop {
        let rows: Vec<(i64,)> = sqlx::query_as(
            "SELECT DISTINCT seq FROM agent_audit WHERE agent_id = $1 AND seq > $2 \
             ORDER BY seq LIMIT 1000",
        )
        .bind(agent)
        .bind(i64::try_from(up_to).unwrap_or(i64::MAX))
        .fetch_all(pool)
        .await?;
        let n = rows.len();
        for (s,) in rows {
            if u64::try_from(s).ok() == Some(up_to + 1) {
                up_to += 1;
            } else {
                return Ok(up_to);
            }
        }
        if n < 1000 {
            return Ok(up_to);
        }
    }
}

/// A connection record of a VM's agents, with the request and the connection limit of the
/// grant that admitted it.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct ConnectionRow {
    pub agent_id: String,
    pub line: String,
    pub at_ms: i64,
    pub request_id: Option<String>,
    pub requestor: Option<String>,
    pub justification: Option<String>,
    /// The grant's connection limit: the controller's grant's, or the one a level-12 agent
    /// reported for its local grant (NULL: unlimited, or a local grant an older agent
    /// reported).
    pub max_connections: Option<i64>,
}

/// The VM's records of `kinds` (across all its agents, revoked ones too) in [from, to),
/// newest first.
pub async fn connections(
    ex: impl Executor<'_, Database = Any>,
    vm: &str,
    kinds: [&str; 2],
    from: i64,
    to: i64,
    limit: i64,
) -> Result<Vec<ConnectionRow>> {
    Ok(sqlx::query_as(
        "SELECT a.agent_id, a.line, a.at_ms, g.request_id, r.requestor, r.justification, \
         COALESCE(g.max_connections, l.max_connections) AS max_connections \
         FROM agent_audit a JOIN agents ag ON ag.id = a.agent_id \
         LEFT JOIN grants g ON g.id = a.grant_id \
         LEFT JOIN agent_local_grants l ON l.agent_id = a.agent_id AND l.grant_id = a.grant_id \
         LEFT JOIN requests r ON r.id = g.request_id \
         WHERE ag.vm = $1 AND a.kind IN ($2, $3) AND a.at_ms >= $4 AND a.at_ms < $5 \
         ORDER BY a.at_ms DESC, a.seq DESC LIMIT $6",
    )
    .bind(vm)
    .bind(kinds[0])
    .bind(kinds[1])
    .bind(from)
    .bind(to)
    .bind(limit)
    .fetch_all(ex)
    .await?)
}

/// The agent's first record of `kind` about a grant.
pub async fn first_of_grant(
    ex: impl Executor<'_, Database = Any>,
    agent: &str,
    grant: &str,
    kind: &str,
) -> Result<Option<String>> {
    let row: Option<(String,)> = sqlx::query_as(
        "SELECT line FROM agent_audit WHERE agent_id = $1 AND grant_id = $2 AND kind = $3 \
         ORDER BY seq LIMIT 1",
    )
    .bind(agent)
    .bind(grant)
    .bind(kind)
    .fetch_optional(ex)
    .await?;
    Ok(row.map(|r| r.0))
}

/// A stored record.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct RecordRow {
    pub agent_id: String,
    pub line: String,
    pub received_ms: i64,
}

/// The VM's records, newest first: in [from, to) unless `unbounded` (records stored before
/// schema version 4 have no time and show only then), of `kind` unless it is empty.
pub async fn records(
    ex: impl Executor<'_, Database = Any>,
    vm: &str,
    unbounded: bool,
    (from, to): (i64, i64),
    kind: &str,
    limit: i64,
) -> Result<Vec<RecordRow>> {
    Ok(sqlx::query_as(
        "SELECT a.agent_id, a.line, a.received_ms FROM agent_audit a \
         JOIN agents ag ON ag.id = a.agent_id \
         WHERE ag.vm = $1 AND ($2 = 1 OR (a.at_ms >= $3 AND a.at_ms < $4)) \
         AND ($5 = '' OR a.kind = $5) \
         ORDER BY a.received_ms DESC, a.seq DESC LIMIT $6",
    )
    .bind(vm)
    .bind(i64::from(unbounded))
    .bind(from)
    .bind(to)
    .bind(kind)
    .bind(limit)
    .fetch_all(ex)
    .await?)
}

/// One record of an agent, as its page lists it.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct AgentLineRow {
    pub seq: i64,
    pub id: String,
    pub line: String,
    pub received_ms: i64,
}

/// The agent's records before (`seq`, `id`), newest (highest seq) first, at most `limit`:
/// one range of the index `agent_audit (agent_id, seq, id)`.
pub async fn agent_page(
    ex: impl Executor<'_, Database = Any>,
    agent: &str,
    (seq, id): (i64, &str),
    limit: i64,
) -> Result<Vec<AgentLineRow>> {
    Ok(sqlx::query_as(
        "SELECT seq, id, line, received_ms FROM agent_audit \
         WHERE agent_id = $1 AND (seq < $2 OR (seq = $2 AND id < $3)) \
         ORDER BY seq DESC, id DESC LIMIT $4",
    )
    .bind(agent)
    .bind(seq)
    .bind(id)
    .bind(limit)
    .fetch_all(ex)
    .await?)
}

/// The agent's records after `after` in seq order (one per seq), up to 5000.
pub async fn chain_page(
    pool: &sqlx::AnyPool,
    agent: &str,
    after: i64,
) -> Result<Vec<(i64, String)>> {
    Ok(sqlx::query_as(
        "SELECT DISTINCT seq, line FROM agent_audit WHERE agent_id = $1 AND seq > $2 \
         ORDER BY seq LIMIT 5000",
    )
    .bind(agent)
    .bind(after)
    .fetch_all(pool)
    .await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_of_a_record() {
        let f = RecordFields::of(
            r#"{"id":"x","seq":3,"time":"2026-01-31T17:00:00.5Z","kind":"connection.admitted","actor":"kernel","grantId":"g1","prev":"0","hash":"1"}"#,
        );
        assert_eq!(f.kind.as_deref(), Some("connection.admitted"));
        assert_eq!(f.at_ms, Some(1_769_878_800_500));
        assert_eq!(f.grant_id.as_deref(), Some("g1"));
        // Not JSON, or JSON of another shape: stored, nothing extracted.
        assert_eq!(RecordFields::of("garbage"), RecordFields::default());
        assert_eq!(
            RecordFields::of(r#"{"kind":5,"time":"yesterday"}"#),
            RecordFields::default()
        );
    }
}
