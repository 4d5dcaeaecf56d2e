-- jitgate controller schema, version 34: the delivery worker's claim reads the pending
-- deliveries of one sink alone, oldest first.
--
-- A partial index over the deliveries still to send (queued or retrying), by sink and event
-- sequence: the claim's candidates come from it in order, with no sort, and without reading
-- the delivered rows kept for the retention or the dead ones. The claim names the
-- condition's values in its text (`store/notify.rs`, `PENDING`): neither SQLite nor a
-- generic PostgreSQL plan matches a partial index against bound parameters.
CREATE INDEX notify_deliveries_claim ON notify_deliveries (sink, event_seq)
    WHERE state IN ('queued', 'retrying');
