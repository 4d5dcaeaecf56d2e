-- jitgate controller schema, version 28: at most one grant-signing key is current and at
-- most one is announced (next), enforced by the database: two `jit-controller keys rotate`
-- begun at the same instant (on one controller or two) announce one key, and the other is
-- refused as a rotation under way. The switch retires the current key before the next one
-- becomes current, so it never holds two rows in one state.
CREATE UNIQUE INDEX grant_keys_one_live ON grant_keys (state) WHERE state IN ('current', 'next');
