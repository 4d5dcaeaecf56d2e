-- jitgate controller schema, version 4: what the views of agent audit records filter on,
-- extracted from each record's JSON when it is stored (records stored before this version
-- keep NULLs and appear only in the unfiltered agent audit view).
ALTER TABLE agent_audit ADD COLUMN kind TEXT;
ALTER TABLE agent_audit ADD COLUMN at_ms BIGINT;
ALTER TABLE agent_audit ADD COLUMN grant_id TEXT;
CREATE INDEX agent_audit_by_kind ON agent_audit (agent_id, kind, at_ms);
