-- jitgate controller schema, version 37: a local (break-glass) grant's connection limit.
--
-- Agents at protocol level 12 report each grant's limit (`AgentMsg::GrantsWithLimits`); a
-- local grant's limit is known to its host alone, so the controller keeps it beside the
-- grant it recorded, for the connections view. NULL: unlimited, or reported by an older
-- agent, which does not say.
ALTER TABLE agent_local_grants ADD COLUMN max_connections BIGINT;
