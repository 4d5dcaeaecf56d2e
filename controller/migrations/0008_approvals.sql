-- jitgate controller schema, version 8: approvals (docs/approvals.md).
-- Groups a token's principal belongs to (approver lists name groups): comma-separated.
ALTER TABLE tokens ADD COLUMN groups TEXT NOT NULL DEFAULT '';
-- The requester's stable principal id (token:NAME, oidc:ISSUER#SUBJECT, ...).
ALTER TABLE requests ADD COLUMN principal TEXT NOT NULL DEFAULT '';
UPDATE requests SET principal = 'token:' || requestor WHERE token_id <> '';
UPDATE requests SET principal = 'local:root' WHERE token_id = '';
-- The approval rules the request must satisfy, fixed when it was made (JSON array of the
-- policy's approval objects); NULL: approved by policy alone.
ALTER TABLE requests ADD COLUMN approval TEXT;
-- While the request is pending: when it times out. NULL once decided (or never pending).
ALTER TABLE requests ADD COLUMN deadline_ms BIGINT;
-- When the final approval came (the window of duration ports starts there).
ALTER TABLE requests ADD COLUMN decided_ms BIGINT;
-- 1 if completed by an admin's emergency approval.
ALTER TABLE requests ADD COLUMN emergency BIGINT NOT NULL DEFAULT 0;
CREATE INDEX requests_pending ON requests (principal) WHERE deadline_ms IS NOT NULL;
CREATE INDEX requests_deadline ON requests (deadline_ms) WHERE deadline_ms IS NOT NULL;
-- The window actually granted starts here (approval or booked start); NULL before.
ALTER TABLE request_ports ADD COLUMN start_ms BIGINT;
-- A port asked for as a duration: its window is this long from when it opens.
ALTER TABLE request_ports ADD COLUMN duration_ms BIGINT;
-- A booked start (the request's per-port startTimeUtc); NULL: starts at approval.
ALTER TABLE request_ports ADD COLUMN booked_ms BIGINT;

-- Every decision on a request, in order.
CREATE TABLE request_approvals (
    request_id TEXT NOT NULL REFERENCES requests(id),
    n          BIGINT NOT NULL,
    rule_idx   BIGINT,          -- the rule (of requests.approval) an approval counted for
    stage      BIGINT,          -- its stage, from 0
    principal  TEXT NOT NULL,   -- who decided (principal id, or 'controller' for a timeout)
    decision   TEXT NOT NULL,   -- Approved | Rejected | Cancelled | TimedOut
    reason     TEXT,
    emergency  BIGINT NOT NULL,
    time_ms    BIGINT NOT NULL,
    PRIMARY KEY (request_id, n)
);
CREATE INDEX request_approvals_by_time ON request_approvals (time_ms);
CREATE INDEX request_approvals_by_principal ON request_approvals (principal, time_ms);
