-- jitgate controller schema, version 32: a VM's policy version (the seq of the last change to
-- its own or its group's policy) read from two small partial indexes holding only policy
-- changes. Every agent connection reads it, and every policy wakeup: before, the query
-- scanned the whole activity log (19 ms at 37 000 entries on PostgreSQL), so a fleet of
-- 10 000 agents connecting kept PostgreSQL busy for minutes. The predicate is
-- `store::activity::POLICY_CHANGE`, word for word (a partial index serves only queries that
-- repeat it).
CREATE INDEX activity_policy_vm ON activity (vm, seq)
    WHERE operation IN ('Update JIT Network Access Policy', 'Delete JIT Network Access Policy');
CREATE INDEX activity_policy_group ON activity (resource_group, seq)
    WHERE operation IN ('Update JIT Network Access Policy', 'Delete JIT Network Access Policy');
