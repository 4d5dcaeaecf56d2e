-- jitgate controller schema, version 18: retention (`jit-controller prune`).
-- One row (id 1) once the activity log has been pruned: entries 1..=seq were exported to an
-- archive file and deleted; `hash` is entry seq's hash, matched by the signed checkpoint at
-- seq that stays in activity_checkpoints. Verification of what remains starts there.
CREATE TABLE activity_anchor (
    id             BIGINT PRIMARY KEY,
    seq            BIGINT NOT NULL,
    hash           TEXT NOT NULL,
    time_ms        BIGINT NOT NULL,
    archive_sha256 TEXT NOT NULL
);
