-- Users, session records and the audit trail (contract §6).
-- Session tokens are never stored: only the hex SHA-256 of the token.

CREATE TABLE users (
    id                    uuid PRIMARY KEY,
    email                 text NOT NULL UNIQUE,
    username              text UNIQUE,
    password_hash         text NOT NULL,
    full_name             text,
    is_active             boolean NOT NULL DEFAULT true,
    failed_login_attempts integer NOT NULL DEFAULT 0,
    last_failed_attempt   timestamptz,
    last_login            timestamptz,
    created_at            timestamptz NOT NULL DEFAULT now(),
    updated_at            timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE sessions (
    id            uuid PRIMARY KEY,
    user_id       uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    token_hash    text NOT NULL UNIQUE,
    status        text NOT NULL DEFAULT 'active'
                  CHECK (status IN ('active', 'logged_out', 'revoked', 'expired')),
    ip            inet,
    user_agent    text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    last_activity timestamptz NOT NULL DEFAULT now(),
    expires_at    timestamptz NOT NULL,
    ended_at      timestamptz,
    end_reason    text
);

CREATE INDEX sessions_user_status ON sessions (user_id, status);
CREATE INDEX sessions_active_expiry ON sessions (expires_at) WHERE status = 'active';

CREATE TABLE auth_events (
    id         bigserial PRIMARY KEY,
    at         timestamptz NOT NULL DEFAULT now(),
    kind       text NOT NULL,
    user_id    uuid REFERENCES users (id) ON DELETE SET NULL,
    session_id uuid,
    ip         inet,
    user_agent text,
    detail     jsonb NOT NULL DEFAULT '{}'::jsonb
);

CREATE INDEX auth_events_user_at ON auth_events (user_id, at);
CREATE INDEX auth_events_kind_at ON auth_events (kind, at);
