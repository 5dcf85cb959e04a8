-- Devices and IP history (contract §6), linked from session records.

CREATE TABLE devices (
    id              uuid PRIMARY KEY,
    user_id         uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    user_agent      text NOT NULL,
    user_agent_hash text NOT NULL,
    label           text NOT NULL,
    first_seen      timestamptz NOT NULL DEFAULT now(),
    last_seen       timestamptz NOT NULL DEFAULT now(),
    UNIQUE (user_id, user_agent_hash)
);

CREATE TABLE ip_addresses (
    id         uuid PRIMARY KEY,
    user_id    uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    address    inet NOT NULL,
    location   text,
    first_seen timestamptz NOT NULL DEFAULT now(),
    last_seen  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (user_id, address)
);

ALTER TABLE sessions
    ADD COLUMN device_id uuid REFERENCES devices (id) ON DELETE SET NULL,
    ADD COLUMN ip_id     uuid REFERENCES ip_addresses (id) ON DELETE SET NULL,
    ADD COLUMN location  text;

CREATE INDEX sessions_device ON sessions (device_id);
CREATE INDEX sessions_ip ON sessions (ip_id);
CREATE INDEX sessions_ended_at ON sessions (ended_at) WHERE status <> 'active';
