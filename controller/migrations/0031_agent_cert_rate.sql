-- jitgate controller schema, version 31: agent certificate renewals limited in rate.
-- A renewal is refused while the agent's last granted one (`agents.cert_renewed_ms`) is
-- younger than the limit window; `cert_rate_logged_ms` is when such a refusal was last
-- written to the activity log, so that at most one entry per agent and window is written
-- (a stolen agent key cannot fill the activity log or `agent_certs`).
ALTER TABLE agents ADD COLUMN cert_rate_logged_ms BIGINT;
