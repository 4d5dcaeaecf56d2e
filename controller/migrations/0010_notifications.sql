-- jitgate controller schema, version 10: notifications (docs/notifications.md).
-- The event seq counter: events are numbered in commit order, like the grant outbox.
INSERT INTO counters (name, value, hash) VALUES ('notify', 0, '');

-- Where notifications go: from controller.toml `[[notify.sinks]]` (created_by
-- 'controller.toml') or, later, the API.
CREATE TABLE notify_sinks (
    name       TEXT PRIMARY KEY,
    spec       TEXT NOT NULL,    -- SinkSpec JSON; its target may be a credential (Slack/Teams)
    created_by TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

-- Every event, written in the transaction of the state change it tells of.
CREATE TABLE notify_events (
    seq        BIGINT PRIMARY KEY,   -- counters 'notify': commit order
    id         TEXT NOT NULL UNIQUE, -- the Jitgate-Delivery id
    event_type TEXT NOT NULL,        -- EventType::as_str
    order_key  TEXT NOT NULL,        -- the request id, or the VM
    body       TEXT NOT NULL,        -- the Event JSON
    people     TEXT NOT NULL,        -- JSON [{displayName, address}] resolved at commit
    created_at BIGINT NOT NULL,
    fanned_out BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX notify_events_fanout ON notify_events (fanned_out, seq);

-- One event to one sink.
CREATE TABLE notify_deliveries (
    event_seq        BIGINT NOT NULL REFERENCES notify_events (seq) ON DELETE CASCADE,
    sink             TEXT NOT NULL REFERENCES notify_sinks (name) ON DELETE CASCADE,
    order_key        TEXT NOT NULL,
    state            TEXT NOT NULL,   -- DeliveryState: queued|retrying|delivered|dead
    attempts         BIGINT NOT NULL DEFAULT 0,
    first_attempt_at BIGINT,          -- start of the give-up window
    next_attempt_at  BIGINT NOT NULL,
    lease_owner      TEXT,            -- the controller attempting it
    lease_until      BIGINT,
    last_attempt_at  BIGINT,
    last_kind        TEXT,            -- FailureKind::as_str or 'delivered'
    last_status      TEXT,            -- StatusClass::as_str
    last_detail      TEXT,            -- never a response body or a URL
    delivered_at     BIGINT,
    PRIMARY KEY (event_seq, sink)
);
CREATE INDEX notify_deliveries_due ON notify_deliveries (state, next_attempt_at);
CREATE INDEX notify_deliveries_order ON notify_deliveries (sink, order_key, event_seq);
