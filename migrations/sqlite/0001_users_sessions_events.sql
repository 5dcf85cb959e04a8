-- Users, session records and the audit trail (contract §6): the SQLite twin of
-- migrations/postgres/0001. Same tables, columns, uniques and checks; a change to one
-- folder needs its twin in the other (same version number), or the backends drift apart.
--
-- How Postgres types are stored here (STRICT tables, so a wrong binding is an error, not a
-- silently stored blob):
--   uuid        TEXT, lower-case hyphenated (text order = Postgres's uuid order)
--   timestamptz TEXT, UTC RFC 3339 with exactly six fraction digits, e.g.
--               2025-01-31T12:00:00.000000Z: fixed width, so text order = time order
--   inet        TEXT, the address in its canonical text form
--   jsonb       TEXT holding valid JSON
--   boolean     INTEGER 0/1
-- Session tokens are never stored: only the hex SHA-256 of the token.
--
-- The code always binds its own timestamps; the defaults below only keep hand-written rows
-- in the same fixed-width form (strftime's %f gives milliseconds, hence the '000').

CREATE TABLE users (
    id                    TEXT PRIMARY KEY NOT NULL,
    email                 TEXT NOT NULL UNIQUE,
    username              TEXT UNIQUE,
    password_hash         TEXT NOT NULL,
    full_name             TEXT,
    is_active             INTEGER NOT NULL DEFAULT 1 CHECK (is_active IN (0, 1)),
    failed_login_attempts INTEGER NOT NULL DEFAULT 0,
    last_failed_attempt   TEXT,
    last_login            TEXT,
    created_at            TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%f', 'now') || '000Z'),
    updated_at            TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%f', 'now') || '000Z')
) STRICT;

CREATE TABLE sessions (
    id            TEXT PRIMARY KEY NOT NULL,
    user_id       TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    token_hash    TEXT NOT NULL UNIQUE,
    status        TEXT NOT NULL DEFAULT 'active'
                  CHECK (status IN ('active', 'logged_out', 'revoked', 'expired')),
    ip            TEXT,
    user_agent    TEXT,
    created_at    TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%f', 'now') || '000Z'),
    last_activity TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%f', 'now') || '000Z'),
    expires_at    TEXT NOT NULL,
    ended_at      TEXT,
    end_reason    TEXT
) STRICT;

CREATE INDEX sessions_user_status ON sessions (user_id, status);
CREATE INDEX sessions_active_expiry ON sessions (expires_at) WHERE status = 'active';

-- AUTOINCREMENT: like bigserial, an id is never handed out twice, even after deletes.
CREATE TABLE auth_events (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    at         TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%f', 'now') || '000Z'),
    kind       TEXT NOT NULL,
    user_id    TEXT REFERENCES users (id) ON DELETE SET NULL,
    session_id TEXT,
    ip         TEXT,
    user_agent TEXT,
    detail     TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(detail))
) STRICT;

CREATE INDEX auth_events_user_at ON auth_events (user_id, at);
CREATE INDEX auth_events_kind_at ON auth_events (kind, at);
