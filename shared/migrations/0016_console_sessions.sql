-- Console sign-ins (docs/console.md): one server-side session per signed-in browser. The
-- cookie carries a random token; only its SHA-256 digest is stored, so a copy of this
-- table opens no session. A session belongs to the API key it was opened with: revoking
-- the key (or deleting the account) ends it.
CREATE TABLE console_sessions (
    digest      bytea PRIMARY KEY,
    account_id  uuid NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    key_id      uuid NOT NULL REFERENCES api_keys (id) ON DELETE CASCADE,
    data        jsonb NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL
);

-- The retention pruning deletes expired sessions oldest first.
CREATE INDEX console_sessions_expires_at ON console_sessions (expires_at);
