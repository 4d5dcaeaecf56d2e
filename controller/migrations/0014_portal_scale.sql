-- jitgate controller schema, version 14: the portal's JIT page at scale (docs/portal.md).

-- When the request was made (its requests.start_ms, which never changes), on each of its
-- ports: the "approved requests of the last 7 days" of a page of VMs are then counted from
-- one index, without reading a request row per port.
ALTER TABLE request_ports ADD COLUMN requested_ms BIGINT NOT NULL DEFAULT 0;
UPDATE request_ports SET requested_ms =
    (SELECT r.start_ms FROM requests r WHERE r.id = request_ports.request_id);
CREATE INDEX request_ports_recent
    ON request_ports (vm, requested_ms, status, status_reason, request_id);

-- The inventory generation: raised by every write that can move a VM between the JIT page's
-- tabs (a VM added, a policy created or deleted, an agent enrolled or revoked, an agent's
-- enforcement detached or re-attached). Each controller caches the tab counts under it and
-- reads it on every view, so a count is never older than the last such write (on any
-- controller). One row.
CREATE TABLE inventory_generation (value BIGINT NOT NULL);
INSERT INTO inventory_generation (value) VALUES (0);
