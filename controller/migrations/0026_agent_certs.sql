-- jitgate controller schema, version 26: agent certificates renewed over the channel.
-- `agents` keeps the agent's current certificate (fingerprint, serial, PEM) and, new, when it
-- expires and when it was last renewed; `agent_certs` keeps every certificate issued to an
-- agent before its current one, so that an agent still connecting with the previous
-- certificate (it had not stored the renewal yet) is recognised, and renewals are on record.
ALTER TABLE agents ADD COLUMN cert_not_after_ms BIGINT;
ALTER TABLE agents ADD COLUMN cert_renewed_ms BIGINT;
CREATE TABLE agent_certs (
    fingerprint  TEXT PRIMARY KEY,
    agent_id     TEXT NOT NULL REFERENCES agents (id),
    serial       TEXT NOT NULL,
    replaced_ms  BIGINT NOT NULL,
    cert_pem     TEXT NOT NULL
);
CREATE INDEX agent_certs_agent ON agent_certs (agent_id);
