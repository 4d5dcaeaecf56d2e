-- jitgate controller schema, version 16: leases. One controller of a cluster at a time does
-- the work that must happen once (the expiry sweep and approval timeouts, the compliance
-- schedule, activity-log checkpoints and their verification, notification delivery), as the
-- holder of the lease named 'leader'. `epoch` grows at every change of holder, and every write
-- of that work checks (holder, epoch, expiry) inside its own transaction: a holder that was
-- frozen past its expiry cannot write once it wakes (fencing). `config` is the holder's
-- cluster configuration fingerprint and `version` its binary's: a controller of the same
-- version whose fingerprint differs is not ready (configuration drift).
CREATE TABLE leases (
    name        TEXT PRIMARY KEY,
    holder      TEXT NOT NULL,
    epoch       BIGINT NOT NULL,
    acquired_ms BIGINT NOT NULL,
    expires_ms  BIGINT NOT NULL,
    config      TEXT NOT NULL,
    version     TEXT NOT NULL
);
INSERT INTO leases (name, holder, epoch, acquired_ms, expires_ms, config, version)
VALUES ('leader', '', 0, 0, 0, '', '');
