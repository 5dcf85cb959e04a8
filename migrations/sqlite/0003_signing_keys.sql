-- Signing keys of the identity assertion: the SQLite twin of migrations/postgres/0003
-- (storage forms as described in 0001; bytea is a BLOB).

CREATE TABLE signing_keys (
    kid         TEXT PRIMARY KEY NOT NULL,
    algorithm   TEXT NOT NULL CHECK (algorithm IN ('EdDSA', 'ES256')),
    private_key BLOB NOT NULL,
    created_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%f', 'now') || '000Z'),
    retired_at  TEXT
) STRICT;

CREATE UNIQUE INDEX signing_keys_live ON signing_keys (algorithm) WHERE retired_at IS NULL;
