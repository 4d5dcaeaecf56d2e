-- jitgate controller schema, version 24: how many deliveries each sink has delivered and
-- still keeps, maintained as deliveries are recorded and pruned, so that the status of the
-- sinks (the portal's Notifications page, `jit notify status`, the metrics) reads one row
-- per sink instead of counting every kept delivery. Filled from the deliveries kept now.
CREATE TABLE notify_delivered (
    sink      TEXT PRIMARY KEY REFERENCES notify_sinks (name) ON DELETE CASCADE,
    delivered BIGINT NOT NULL
);
INSERT INTO notify_delivered (sink, delivered)
SELECT sink, COUNT(*) FROM notify_deliveries WHERE state = 'delivered' GROUP BY sink;
