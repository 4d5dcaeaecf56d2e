-- jitgate controller schema, version 11: more notifications (docs/notifications.md).
-- `access.ending_soon` is told once per port window: 1 once its event is written.
ALTER TABLE request_ports ADD COLUMN ending_soon_told BIGINT NOT NULL DEFAULT 0;
-- An API token's email address (`token create --email`): where the requester and the
-- approvers it names are mailed by email sinks.
ALTER TABLE tokens ADD COLUMN email TEXT;
-- `agent.offline` was told for this agent and `agent.back_online` is still due (1).
ALTER TABLE agents ADD COLUMN offline_told BIGINT NOT NULL DEFAULT 0;
-- The status scrape and `jit notify status` count deliveries per sink and state.
CREATE INDEX notify_deliveries_by_sink ON notify_deliveries (sink, state);
