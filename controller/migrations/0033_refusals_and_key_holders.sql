-- jitgate controller schema, version 33: refused certificate renewals logged at most once per
-- agent, kind and window; which grant-signing keys each live controller lacks.
--
-- `agent_cert_refusals`: when a renewal refusal of one kind (rateLimited, tooLarge,
-- badRequest, keyMismatch, revoked, pastGrace, signing) was last written to the activity log
-- for an agent. At most one entry per agent and kind is written per
-- `[certificates] renewal_min_interval_seconds` window (a stolen agent key cannot grow the
-- log one entry per attempt). It replaces `agents.cert_rate_logged_ms` (migration 31), which
-- is copied here and no longer read.
CREATE TABLE agent_cert_refusals (
    agent_id  TEXT NOT NULL,
    kind      TEXT NOT NULL,
    logged_ms BIGINT NOT NULL,
    PRIMARY KEY (agent_id, kind)
);
INSERT INTO agent_cert_refusals (agent_id, kind, logged_ms)
    SELECT id, 'rateLimited', cert_rate_logged_ms FROM agents
    WHERE cert_rate_logged_ms IS NOT NULL;

-- `controller_keys`: one row per running controller of a cluster (its name, as in the leader
-- lease), with an expiry: the ids of the grant-signing keys in use whose private half it
-- holds (space-separated). The automatic switch waits while an unexpired row does not hold
-- the announced key (a controller that has not read the keys since the announcement counts
-- as lacking it); a controller that stops removes its row, one that dies stops renewing it.
CREATE TABLE controller_keys (
    controller TEXT PRIMARY KEY,
    held       TEXT NOT NULL,
    expires_ms BIGINT NOT NULL
);
