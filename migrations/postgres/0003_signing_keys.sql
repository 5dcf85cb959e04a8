-- Signing keys of the identity assertion (X-Authgate-Assertion), shared by every gateway on
-- this database so that they all sign with the same key and publish the same JWKS. The first
-- gateway to find no live key adds one; `authgate assertion rotate` retires the live keys and
-- adds the next. Private keys are PKCS#8 DER: whoever can read this table can sign assertions
-- (operators who want the key elsewhere set assertion.key_file instead).

CREATE TABLE signing_keys (
    kid         text PRIMARY KEY,
    algorithm   text NOT NULL CHECK (algorithm IN ('EdDSA', 'ES256')),
    private_key bytea NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    retired_at  timestamptz
);

-- At most one live key per algorithm: gateways starting together on an empty table cannot
-- each add their own.
CREATE UNIQUE INDEX signing_keys_live ON signing_keys (algorithm) WHERE retired_at IS NULL;
