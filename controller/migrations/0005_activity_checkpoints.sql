-- jitgate controller schema, version 5: signed checkpoints of the activity log's chain head
-- (docs/controller.md, "Activity log"). The signature is checked against the key in the state
-- directory, never against anything stored here.
CREATE TABLE activity_checkpoints (
    seq BIGINT NOT NULL,
    key_id TEXT NOT NULL,
    hash TEXT NOT NULL,
    time_ms BIGINT NOT NULL,
    signature TEXT NOT NULL,
    PRIMARY KEY (seq, key_id)
);

-- The agent's certificate (PEM), kept at enrolment: it verifies the agent's signed audit
-- checkpoints (and must chain to the CA in the state directory). NULL for agents enrolled
-- before this version.
ALTER TABLE agents ADD COLUMN cert_pem TEXT;
