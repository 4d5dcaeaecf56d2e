-- jitgate controller schema, version 3: compliance (docs/compliance.md).

-- Where the policy "Management ports of virtual machines should be protected with
-- just-in-time network access control" (audit effect) is assigned: the whole fleet
-- (scope '*') or one resource group (scope 'rg:NAME'). VMs added to the scope later are covered.
CREATE TABLE compliance_assignments (
    id         TEXT PRIMARY KEY,
    scope      TEXT NOT NULL UNIQUE,
    effect     TEXT NOT NULL,
    created_ms BIGINT NOT NULL,
    created_by TEXT NOT NULL
);

-- One row per evaluation; results keep the state at that time, so any past date can be shown.
CREATE TABLE compliance_scans (
    id            BIGINT PRIMARY KEY,
    time_ms       BIGINT NOT NULL,
    reason        TEXT NOT NULL, -- schedule | on-demand
    probed        BIGINT NOT NULL, -- 1 if this evaluation ran a network probe
    compliant     BIGINT NOT NULL,
    non_compliant BIGINT NOT NULL,
    unknown       BIGINT NOT NULL,
    unmanaged     BIGINT NOT NULL
);
CREATE INDEX compliance_scans_by_time ON compliance_scans (time_ms);

CREATE TABLE compliance_results (
    scan_id        BIGINT NOT NULL,
    resource       TEXT NOT NULL, -- VM name, or the address of an unmanaged host
    kind           TEXT NOT NULL, -- virtualMachine | unmanagedHost
    resource_group TEXT NOT NULL,
    owner          TEXT NOT NULL,
    state          TEXT NOT NULL, -- Compliant | NonCompliant | Unknown
    findings       TEXT NOT NULL, -- JSON array
    PRIMARY KEY (scan_id, kind, resource)
);

-- What the last network probe found open: (address, port) accepting a TCP connection from
-- the controller without an active grant for it. vm is '' for an unmanaged host. Replaced
-- by each probe; evaluations between probes use it.
CREATE TABLE compliance_exposures (
    address  TEXT NOT NULL,
    port     BIGINT NOT NULL,
    vm       TEXT NOT NULL,
    time_ms  BIGINT NOT NULL,
    PRIMARY KEY (address, port)
);
