-- jitgate controller schema, version 17, for the portal's Fleet page: the version each agent
-- named in its last Hello (NULL until it says Hello again), and indexes that let the page
-- read the next agents by VM name and an agent's delivered records newest first, a page at
-- a time (keyset), without sorting the fleet or the agent's whole audit trail.
ALTER TABLE agents ADD COLUMN version TEXT;
CREATE INDEX agents_by_vm_id ON agents (vm, id);
CREATE INDEX agent_audit_by_agent_seq_id ON agent_audit (agent_id, seq, id);
