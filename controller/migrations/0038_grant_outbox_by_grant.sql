-- jitgate controller schema, version 38: the grant outbox by grant.
--
-- An agent's acknowledgement marks its grant's `apply` row delivered (`WHERE grant_id = ...`),
-- and `prune` looks for a grant's outbox rows the same way; with only the (vm, seq) index
-- each of them read the whole outbox, which keeps every grant ever sent until it is pruned:
-- with 50 agents connected the acknowledgements held initiates to about 150/s.
CREATE INDEX grant_outbox_by_grant ON grant_outbox (grant_id);
