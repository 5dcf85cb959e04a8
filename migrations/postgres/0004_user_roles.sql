-- Users' roles, for route allow lists (`allow = ["role:NAME"]`), `X-User-Roles` and the
-- identity assertion's `roles` claim. Set by `authgate user set-role` / `remove-role`. Role
-- names are lower-case (the code normalises them), at most 64 characters of a-z 0-9 _ . -.

CREATE TABLE user_roles (
    user_id    uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    role       text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, role)
);
