-- jitgate controller schema, version 19: grant-signing key rotation (`jit-controller keys`).
-- Every grant-signing key the cluster has used: its public half only (the private half stays
-- in each controller's state directory, keys/grant-<key_id>.key, and is deleted at
-- retirement), its state (current | next | retired), and the signed rotation messages kept
-- for agents that were offline: `announcement` (this key, signed by its predecessor) and
-- `retirement` (the predecessor retired, signed by this key).
CREATE TABLE grant_keys (
    key_id       TEXT PRIMARY KEY,
    public_pem   TEXT NOT NULL,
    state        TEXT NOT NULL,
    predecessor  TEXT,
    created_ms   BIGINT NOT NULL,
    switched_ms  BIGINT,
    retired_ms   BIGINT,
    announcement TEXT,
    retirement   TEXT
);

-- Which agent answered which rotation step (`KeyResult` Applied or AlreadyApplied).
CREATE TABLE grant_key_acks (
    agent_id TEXT NOT NULL,
    key_id   TEXT NOT NULL,
    step     TEXT NOT NULL,
    time_ms  BIGINT NOT NULL,
    PRIMARY KEY (agent_id, key_id, step)
);
