-- jitgate controller schema, version 29: policy versions that never go backwards. A VM's
-- policy version is the activity-log seq of the last change to its effective policy plus
-- `policy_base`, 0 until an agent reports a version above what the database can have issued
-- (the database was restored from a backup, or a replica lacking the last commits was
-- promoted); the base then moves so that the next version an agent gets is above its own
-- (docs/ha.md, "Sequence numbers after a restore or promotion"). The activity log's own seq
-- stays contiguous and verifiable.
INSERT INTO counters (name, value, hash) VALUES ('policy_base', 0, '');
