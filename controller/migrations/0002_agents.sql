-- jitgate controller schema, version 2: agent enrolment, the agent fleet, agent audit records.

-- One-time enrolment tokens: only the SHA-256 is stored; single use; 24 h expiry.
CREATE TABLE enroll_tokens (
    hash       TEXT PRIMARY KEY,
    vm         TEXT NOT NULL REFERENCES vms(name),
    created_ms BIGINT NOT NULL,
    expires_ms BIGINT NOT NULL,
    used_ms    BIGINT,
    agent_id   TEXT
);

-- Enrolled agents. status: active | revoked. A VM has at most one active agent: enrolling
-- again revokes the previous credential.
CREATE TABLE agents (
    id               TEXT PRIMARY KEY,
    vm               TEXT NOT NULL REFERENCES vms(name),
    cert_fingerprint TEXT NOT NULL UNIQUE, -- SHA-256 of the certificate DER, hex
    cert_serial      TEXT NOT NULL,
    status           TEXT NOT NULL,
    enrolled_ms      BIGINT NOT NULL,
    revoked_ms       BIGINT,
    last_seen_ms     BIGINT,
    heartbeat        TEXT -- the last heartbeat, JSON
);
CREATE INDEX agents_by_vm ON agents (vm, status);

-- Audit records delivered by agents, stored once per (agent, id).
CREATE TABLE agent_audit (
    agent_id    TEXT NOT NULL,
    id          TEXT NOT NULL,
    seq         BIGINT NOT NULL,
    line        TEXT NOT NULL,
    received_ms BIGINT NOT NULL,
    PRIMARY KEY (agent_id, id)
);
CREATE INDEX agent_audit_by_seq ON agent_audit (agent_id, seq);

-- Local (break-glass) grants an agent reported, recorded in the activity log once each.
CREATE TABLE agent_local_grants (
    agent_id    TEXT NOT NULL,
    grant_id    TEXT NOT NULL,
    reported_ms BIGINT NOT NULL,
    PRIMARY KEY (agent_id, grant_id)
);
