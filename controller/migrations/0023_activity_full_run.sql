-- jitgate controller schema, version 23: the verification of the whole activity log that
-- runs in the background, shared by every controller on the database: which controller
-- runs it, how far it is (written every second), and its result once finished. Any
-- controller's portal shows it; a run whose controller stopped writing progress for 30 s
-- counts as abandoned and may be started again.
CREATE TABLE activity_full_run (
    id         BIGINT PRIMARY KEY,
    controller TEXT NOT NULL,
    started_ms BIGINT NOT NULL,
    total      BIGINT NOT NULL,
    walked     BIGINT NOT NULL,
    updated_ms BIGINT NOT NULL,
    running    BIGINT NOT NULL,
    report     TEXT,
    error      TEXT
);
