-- Devices and IP history (contract §6), linked from session records: the SQLite twin of
-- migrations/postgres/0002 (storage forms as described in 0001).

CREATE TABLE devices (
    id              TEXT PRIMARY KEY NOT NULL,
    user_id         TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    user_agent      TEXT NOT NULL,
    user_agent_hash TEXT NOT NULL,
    label           TEXT NOT NULL,
    first_seen      TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%f', 'now') || '000Z'),
    last_seen       TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%f', 'now') || '000Z'),
    UNIQUE (user_id, user_agent_hash)
) STRICT;

CREATE TABLE ip_addresses (
    id         TEXT PRIMARY KEY NOT NULL,
    user_id    TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    address    TEXT NOT NULL,
    location   TEXT,
    first_seen TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%f', 'now') || '000Z'),
    last_seen  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%f', 'now') || '000Z'),
    UNIQUE (user_id, address)
) STRICT;

-- SQLite adds one column per ALTER TABLE.
ALTER TABLE sessions ADD COLUMN device_id TEXT REFERENCES devices (id) ON DELETE SET NULL;
ALTER TABLE sessions ADD COLUMN ip_id TEXT REFERENCES ip_addresses (id) ON DELETE SET NULL;
ALTER TABLE sessions ADD COLUMN location TEXT;

CREATE INDEX sessions_device ON sessions (device_id);
CREATE INDEX sessions_ip ON sessions (ip_id);
CREATE INDEX sessions_ended_at ON sessions (ended_at) WHERE status <> 'active';
