-- Operators are people (issue 28): users with roles, their invitations and recovery codes,
-- named service accounts for automation, and API keys that belong to one of the two.
-- The role ranks are shared/domain/roles.py's: viewer < operator < admin < owner.

-- A named service account: automation's keys belong to one. Every existing key moves to
-- the account's service account "default" below, so automation keeps working unchanged.
CREATE TABLE service_accounts (
    id          uuid PRIMARY KEY,
    account_id  uuid NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    name        text NOT NULL,
    role        text NOT NULL CHECK (role IN ('viewer', 'operator', 'admin')),
    created_at  timestamptz NOT NULL DEFAULT now(),
    removed_at  timestamptz
);
CREATE UNIQUE INDEX service_accounts_name ON service_accounts (account_id, name) WHERE removed_at IS NULL;

-- A person in an account. The e-mail address signs in (e-mail first: its domain picks the
-- account's single sign-on), so it is unique across accounts among users not removed. A
-- removed user's row stays, for the audit trail's sake, with its credentials erased.
CREATE TABLE users (
    id               uuid PRIMARY KEY,
    account_id       uuid NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    email            text NOT NULL,
    role             text NOT NULL CHECK (role IN ('viewer', 'operator', 'admin', 'owner')),
    password_hash    text,         -- argon2id (PHC string); NULL for a user who signs in through SSO only
    totp_sealed      bytea,        -- the TOTP secret, sealed with the keyring; NULL until enrolled
    totp_last_step   bigint,       -- the last accepted TOTP time step: a code is accepted once
    sso_subject      text,         -- the provider's `sub`, once the user signed in through SSO
    created_at       timestamptz NOT NULL DEFAULT now(),
    removed_at       timestamptz
);
CREATE UNIQUE INDEX users_email ON users (lower(email)) WHERE removed_at IS NULL;
CREATE INDEX users_account ON users (account_id, created_at) WHERE removed_at IS NULL;

-- Recovery codes: shown once, stored as digests, each usable once.
CREATE TABLE user_recovery_codes (
    user_id  uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    digest   bytea NOT NULL,
    used_at  timestamptz,
    PRIMARY KEY (user_id, digest)
);

-- An invitation: its link's token is shown once to the inviter and kept as a digest; it is
-- consumed when accepted (never when viewed) and refused after its expiry.
CREATE TABLE invitations (
    id                  uuid PRIMARY KEY,
    account_id          uuid NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    token_digest        bytea NOT NULL UNIQUE,
    email               text NOT NULL,
    role                text NOT NULL CHECK (role IN ('viewer', 'operator', 'admin', 'owner')),
    invited_by_user_id  uuid REFERENCES users (id) ON DELETE SET NULL,
    invited_by_key_id   uuid REFERENCES api_keys (id) ON DELETE SET NULL,
    created_at          timestamptz NOT NULL DEFAULT now(),
    expires_at          timestamptz NOT NULL,
    consumed_at         timestamptz,
    consumed_by         uuid REFERENCES users (id) ON DELETE SET NULL,
    revoked_at          timestamptz
);
CREATE INDEX invitations_account ON invitations (account_id, created_at DESC);

-- API keys: a role (never owner) and an owner, a user (a personal key, ended with the user)
-- or a service account. `read_only` becomes the viewer role, kept as a generated column so
-- that every reader of it (and the API's `read_only` field) stays true.
ALTER TABLE api_keys
    ADD COLUMN role text NOT NULL DEFAULT 'admin' CHECK (role IN ('viewer', 'operator', 'admin')),
    ADD COLUMN user_id uuid REFERENCES users (id),
    ADD COLUMN service_account_id uuid REFERENCES service_accounts (id);
UPDATE api_keys SET role = 'viewer' WHERE read_only;
ALTER TABLE api_keys DROP COLUMN read_only;
ALTER TABLE api_keys ADD COLUMN read_only boolean GENERATED ALWAYS AS (role = 'viewer') STORED;

INSERT INTO service_accounts (id, account_id, name, role)
SELECT gen_random_uuid(), a.id, 'default', 'admin' FROM accounts a;
UPDATE api_keys k SET service_account_id = s.id
FROM service_accounts s WHERE s.account_id = k.account_id AND s.name = 'default';
ALTER TABLE api_keys ADD CONSTRAINT api_keys_one_owner CHECK (num_nonnulls(user_id, service_account_id) = 1);
CREATE INDEX api_keys_user ON api_keys (user_id) WHERE user_id IS NOT NULL AND revoked_at IS NULL;

-- Console sessions: a person's (user_id) once the account has users; a key's (key_id) only
-- while it has none. `authenticated_at` is when the person last proved who they are (sign-in
-- or re-authentication): the most sensitive actions need it recent.
ALTER TABLE console_sessions
    ALTER COLUMN key_id DROP NOT NULL,
    ADD COLUMN id uuid NOT NULL DEFAULT gen_random_uuid(),
    ADD COLUMN user_id uuid REFERENCES users (id) ON DELETE CASCADE,
    ADD COLUMN authenticated_at timestamptz NOT NULL DEFAULT now(),
    ADD COLUMN source_address text NOT NULL DEFAULT '',
    ADD COLUMN user_agent text NOT NULL DEFAULT '',
    ADD CONSTRAINT console_sessions_one_credential CHECK (num_nonnulls(key_id, user_id) = 1);
CREATE UNIQUE INDEX console_sessions_id ON console_sessions (id);
CREATE INDEX console_sessions_user ON console_sessions (user_id) WHERE user_id IS NOT NULL;

-- The audit trail names the person: the user (ID and e-mail at the time), the role the call
-- carried, the service account, and the console session when the change came through one.
ALTER TABLE operator_audit_events
    ADD COLUMN user_id uuid,
    ADD COLUMN user_email text,
    ADD COLUMN actor_role text,
    ADD COLUMN service_account text,
    ADD COLUMN session_id uuid;
CREATE INDEX operator_audit_events_user ON operator_audit_events (account_id, user_id, at DESC)
    WHERE user_id IS NOT NULL;
