-- jitgate controller schema, version 13, for the portal: one-time sign-in links
-- (`jit-controller login-link`, docs/portal.md). Only the hash of the link's secret is kept.
CREATE TABLE login_links (
    id          TEXT PRIMARY KEY,         -- lnk_ + 32 hex digits, named in the activity log
    token_hash  TEXT NOT NULL UNIQUE,     -- SHA-256 of the secret in the link
    name        TEXT NOT NULL,            -- the principal is link:NAME
    role        TEXT NOT NULL,
    scope       TEXT NOT NULL,
    created_ms  BIGINT NOT NULL,
    expires_ms  BIGINT NOT NULL,          -- at most 10 minutes after created_ms
    redeemed_ms BIGINT                    -- set once, by the one POST that redeems it
);

-- Whether the agent's last status report left the host without enforcement (no interface,
-- or a detached program): the portal's JIT page lists such VMs as unsupported, and finds them
-- in SQL without reading every report.
ALTER TABLE agents ADD COLUMN detached BIGINT NOT NULL DEFAULT 0;

-- A VM's history filtered by status reads the VM's ports in that status directly (without
-- it, the status index of the expiry sweep is chosen and every port in that status is read).
CREATE INDEX request_ports_by_vm_status ON request_ports (vm, status, request_id);
