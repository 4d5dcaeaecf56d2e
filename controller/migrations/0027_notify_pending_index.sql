-- jitgate controller schema, version 27: the sinks' status reads nothing in proportion to a
-- sink's backlog or to the deliveries kept.
--
-- The pending and dead deliveries are read from one index, `(state, sink, event_seq)`,
-- without touching the table: their counts per sink, and each sink's oldest pending event
-- (the smallest sequence number, which follows the order events were written). Before it, a
-- sink with a backlog (a receiver down for an hour) made the portal's Notifications page
-- read every pending row. It replaces `(sink, state)`: every query that used that one (a
-- sink's dead deliveries, the re-drive, the last failure) has both columns to match, and
-- the number of indexes the delivery path keeps up to date stays the same.
DROP INDEX notify_deliveries_by_sink;
CREATE INDEX notify_deliveries_pending ON notify_deliveries (state, sink, event_seq);
-- Each sink's last success is kept beside its delivered count (moved forward in the same
-- statement), instead of being looked for among the latest deliveries of every sink.
ALTER TABLE notify_delivered ADD COLUMN last_delivered_at BIGINT;
UPDATE notify_delivered SET last_delivered_at = (SELECT MAX(d.delivered_at)
    FROM notify_deliveries d WHERE d.state = 'delivered' AND d.sink = notify_delivered.sink);
