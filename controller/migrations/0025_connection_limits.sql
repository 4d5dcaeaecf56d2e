-- jitgate controller schema, version 25: connection-limited grants. A request port's
-- `max_connections` is the limit its grants carry (the request's, else its policy's; NULL:
-- unlimited), and a grant's is the limit sent to the agent in a `LimitedGrant` (protocol
-- level 5): the grant admits at most that many new connections. Policies keep theirs in
-- their JSON document (`maxConnections` of a port).
ALTER TABLE request_ports ADD COLUMN max_connections BIGINT;
ALTER TABLE grants ADD COLUMN max_connections BIGINT;
