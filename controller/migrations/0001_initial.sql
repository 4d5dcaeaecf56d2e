-- jitgate controller schema, version 1. Portable SQL: runs unchanged on SQLite and PostgreSQL.
-- Times are milliseconds since the Unix epoch (UTC). Hashes are lowercase hex.

-- Counters that must be unique across controllers (sequence numbers) and the activity log's
-- chain head. Every write transaction starts by updating the 'chain' row, which takes the
-- write lock (SQLite) or the row lock (PostgreSQL) first and so serialises the chain.
CREATE TABLE counters (
    name  TEXT PRIMARY KEY,
    value BIGINT NOT NULL,
    hash  TEXT NOT NULL
);
INSERT INTO counters (name, value, hash) VALUES ('chain', 0, '0000000000000000000000000000000000000000000000000000000000000000');
INSERT INTO counters (name, value, hash) VALUES ('request', 0, '');
INSERT INTO counters (name, value, hash) VALUES ('outbox', 0, '');

CREATE TABLE resource_groups (
    name       TEXT PRIMARY KEY,
    owner      TEXT NOT NULL,
    created_ms BIGINT NOT NULL
);

CREATE TABLE vms (
    name           TEXT PRIMARY KEY,
    resource_group TEXT NOT NULL REFERENCES resource_groups(name),
    addresses      TEXT NOT NULL, -- JSON array of IP address strings
    created_ms     BIGINT NOT NULL
);
CREATE INDEX vms_by_group ON vms (resource_group);

-- A VM's own policy (scope_kind 'vm') replaces its group's (scope_kind 'rg').
CREATE TABLE policies (
    scope_kind TEXT NOT NULL,
    scope_name TEXT NOT NULL,
    body       TEXT NOT NULL, -- canonical JSON {"ports":[...]}
    updated_ms BIGINT NOT NULL,
    updated_by TEXT NOT NULL,
    PRIMARY KEY (scope_kind, scope_name)
);

CREATE TABLE tokens (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    hash        TEXT NOT NULL UNIQUE, -- SHA-256 of the token; the token itself is never stored
    role        TEXT NOT NULL,
    scope       TEXT NOT NULL,
    created_ms  BIGINT NOT NULL,
    expires_ms  BIGINT,
    revoked_ms  BIGINT
);

CREATE TABLE requests (
    id             TEXT PRIMARY KEY,
    seq            BIGINT NOT NULL UNIQUE,
    requestor      TEXT NOT NULL,
    token_id       TEXT NOT NULL,
    caller_address TEXT NOT NULL,
    justification  TEXT NOT NULL,
    start_ms       BIGINT NOT NULL,
    denied         BIGINT NOT NULL, -- 0 or 1
    denial_reasons TEXT NOT NULL    -- JSON array of DenialReason
);

CREATE TABLE request_ports (
    request_id     TEXT NOT NULL REFERENCES requests(id),
    idx            BIGINT NOT NULL,
    vm             TEXT NOT NULL,
    resource_group TEXT NOT NULL,
    number         BIGINT NOT NULL,
    protocol       TEXT NOT NULL, -- TCP | UDP | *
    prefixes       TEXT NOT NULL, -- canonical prefixes, comma-separated
    end_ms         BIGINT NOT NULL,
    status         TEXT NOT NULL, -- Initiated | Applied | Denied | Revoked
    status_reason  TEXT,
    on_expiry      TEXT,
    PRIMARY KEY (request_id, idx)
);
CREATE INDEX request_ports_by_vm ON request_ports (vm, request_id);
CREATE INDEX request_ports_active ON request_ports (status, end_ms);

-- One grant per (port, concrete protocol, prefix) of an approved request.
-- state: pending (not yet acknowledged by the agent) | applied | superseded | revoked | expired
CREATE TABLE grants (
    id            TEXT PRIMARY KEY,
    request_id    TEXT NOT NULL REFERENCES requests(id),
    port_idx      BIGINT NOT NULL,
    vm            TEXT NOT NULL,
    protocol      TEXT NOT NULL, -- TCP | UDP
    port          BIGINT NOT NULL,
    prefix        TEXT NOT NULL,
    start_ms      BIGINT NOT NULL,
    end_ms        BIGINT NOT NULL,
    on_expiry     TEXT NOT NULL,
    state         TEXT NOT NULL,
    superseded_by TEXT
);
CREATE INDEX grants_match ON grants (vm, port, protocol, prefix, state);
CREATE INDEX grants_by_request ON grants (request_id, port_idx);
CREATE INDEX grants_active ON grants (state, end_ms);

-- The seam to the agent channel: what each VM's agent must do, in order. 'apply' carries a
-- grant (and the grants it supersedes, to be removed only after it is in place); 'revoke'
-- withdraws one. The agent channel reads rows with seq > its cursor for its VM and acknowledges.
CREATE TABLE grant_outbox (
    seq          BIGINT PRIMARY KEY,
    vm           TEXT NOT NULL,
    op           TEXT NOT NULL, -- apply | revoke
    grant_id     TEXT NOT NULL,
    replaces     TEXT NOT NULL, -- comma-separated grant ids superseded by this one ('' if none)
    created_ms   BIGINT NOT NULL,
    delivered_ms BIGINT
);
CREATE INDEX grant_outbox_by_vm ON grant_outbox (vm, seq);

-- Append-only, hash-chained activity log.
CREATE TABLE activity (
    seq            BIGINT PRIMARY KEY,
    time_ms        BIGINT NOT NULL,
    operation      TEXT NOT NULL,
    resource_type  TEXT NOT NULL,
    resource_group TEXT NOT NULL,
    vm             TEXT NOT NULL,
    caller         TEXT NOT NULL,
    caller_address TEXT NOT NULL,
    outcome        TEXT NOT NULL,
    request_id     TEXT NOT NULL,
    details        TEXT NOT NULL, -- JSON
    prev_hash      TEXT NOT NULL,
    hash           TEXT NOT NULL
);
CREATE INDEX activity_by_time ON activity (time_ms);
CREATE INDEX activity_by_vm ON activity (vm, seq);
