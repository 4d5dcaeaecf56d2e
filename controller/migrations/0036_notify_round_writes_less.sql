-- jitgate controller schema, version 36: the delivery worker's round writes less.
--
-- 1. Which events are fanned out is one number, not a flag on every event. The fan-out
--    takes events in `seq` order under the counters lock, and `seq` is commit order, so the
--    events fanned out are always those up to some seq: `counters.notify_fanned` holds it.
--    Marking a batch fanned out is then one small row written, where the flag rewrote every
--    event row of the batch (bodies included) and moved its entry in `notify_events_fanout`;
--    the request path's event inserts no longer keep that index either. The mark starts
--    below the first event not fanned out yet (else at the last event, else 0).
INSERT INTO counters (name, value, hash)
    SELECT 'notify_fanned', COALESCE((SELECT MIN(seq) - 1 FROM notify_events WHERE fanned_out = 0),
        (SELECT MAX(seq) FROM notify_events), 0), '';
DROP INDEX notify_events_fanout;
ALTER TABLE notify_events DROP COLUMN fanned_out;

-- 2. A leased (claimed) delivery is in neither index the claim reads. The claim walked the
--    pending deliveries of its sink oldest first, and those it had leased itself (up to 512
--    per sink, each looked up in the table to check its lease) came first, in every round.
--    Now the claim's index (migration 34) and the due index hold the pending deliveries that
--    no controller holds; a lease that expired is found in a small index of the leased
--    deliveries by expiry and cleared (the round's reclaim) before the claim. A healthy
--    sink's delivery, claimed as it is fanned out, enters neither of the first two at all.
--    Every path that ends a lease clears `lease_owner` and `lease_until` together; a stray
--    `lease_until` without an owner is cleared here.
UPDATE notify_deliveries SET lease_until = NULL WHERE lease_owner IS NULL AND lease_until IS NOT NULL;
DROP INDEX notify_deliveries_claim;
CREATE INDEX notify_deliveries_claim ON notify_deliveries (sink, event_seq)
    WHERE state IN ('queued', 'retrying') AND lease_owner IS NULL;
DROP INDEX notify_deliveries_due;
CREATE INDEX notify_deliveries_due ON notify_deliveries (state, next_attempt_at)
    WHERE state IN ('queued', 'retrying') AND lease_owner IS NULL;
CREATE INDEX notify_deliveries_leased ON notify_deliveries (lease_until)
    WHERE lease_owner IS NOT NULL;
