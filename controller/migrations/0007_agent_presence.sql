-- jitgate controller schema, version 10: which controller each agent's channel is connected
-- to, with an expiry (several controllers on one PostgreSQL). Written in batches by each
-- controller (docs/ha.md); a row past its expiry means nothing.
CREATE TABLE agent_presence (
    agent_id   TEXT PRIMARY KEY,
    controller TEXT NOT NULL,
    expires_ms BIGINT NOT NULL
);
CREATE INDEX agent_presence_by_controller ON agent_presence (controller, expires_ms);
