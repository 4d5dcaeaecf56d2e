-- jitgate controller schema, version 15: how far the activity log has been verified.
-- One row (id 1): entries 1..=seq chain correctly up to `hash`, and the signed checkpoints up
-- to `covered` match; or, once a check failed, the first entry that did not (failed_seq,
-- problem), which stays until a verification of the whole log passes.
CREATE TABLE activity_verified (
    id          BIGINT PRIMARY KEY,
    seq         BIGINT NOT NULL,
    hash        TEXT NOT NULL,
    covered     BIGINT NOT NULL,
    checkpoints BIGINT NOT NULL,
    time_ms     BIGINT NOT NULL,
    failed_seq  BIGINT,
    problem     TEXT
);
