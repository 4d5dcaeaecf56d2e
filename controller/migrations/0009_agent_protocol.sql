-- jitgate controller schema, version 9: the agent protocol level each agent announced in its
-- last Hello (1 for agents that send the older Hello; docs/protocol.md "Levels"). A request
-- that needs a newer level (a booked start) is refused for a VM whose agent is older.
ALTER TABLE agents ADD COLUMN protocol BIGINT NOT NULL DEFAULT 1;
