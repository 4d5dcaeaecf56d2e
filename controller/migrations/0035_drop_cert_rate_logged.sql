-- jitgate controller schema, version 35: `agents.cert_rate_logged_ms` dropped.
--
-- Migration 31 added it (when a refused renewal was last written to the activity log);
-- migration 33 replaced it with `agent_cert_refusals` and copied its values there, and no
-- code has read or written it since. The column is in no index, constraint, view or
-- trigger, so one statement drops it on both backends (SQLite 3.35 and later, PostgreSQL).
ALTER TABLE agents DROP COLUMN cert_rate_logged_ms;
