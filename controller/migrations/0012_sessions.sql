-- jitgate controller schema, version 12: sessions of people signed in with OpenID Connect
-- (docs/identity.md), and the single-use record of sign-in callbacks.
CREATE TABLE sessions (
    id             TEXT PRIMARY KEY,      -- random, for list/revoke; not the credential
    token_hash     TEXT NOT NULL UNIQUE,  -- SHA-256 of the session credential, as for API tokens
    principal      TEXT NOT NULL,         -- oidc:ISSUER#SUBJECT
    display_name   TEXT NOT NULL,
    email          TEXT,
    groups         TEXT NOT NULL,         -- JSON of the identity's Groups: known list, or unknown with reason
    roles          TEXT NOT NULL,         -- JSON [{role, scope, viaGroups}] mapped from the groups
    client         TEXT NOT NULL,         -- cli | portal
    refresh_sealed TEXT,                  -- the provider's refresh token, sealed, bound to id
    created_ms     BIGINT NOT NULL,
    expires_ms     BIGINT NOT NULL,       -- created + session_lifetime: absolute cap
    refresh_due_ms BIGINT NOT NULL,       -- at most 15 minutes ahead, never past expires_ms
    source_address TEXT NOT NULL,
    ended_ms       BIGINT,
    end_reason     TEXT                   -- SessionEndReason: signed_out | revoked | refresh_failed
);
CREATE INDEX sessions_by_principal ON sessions (principal);
CREATE INDEX sessions_refresh_due ON sessions (refresh_due_ms) WHERE ended_ms IS NULL;

-- A sign-in callback is redeemed once, across controllers: the insert fails on a replay.
CREATE TABLE oidc_used_callbacks (
    replay_key TEXT PRIMARY KEY,          -- hex of the callback's ReplayKey
    keep_until BIGINT NOT NULL            -- ms; older rows are deleted
);
