-- Scoped API keys: a read-only key may read the account's registry and change nothing
-- (every state-changing call answers 403), and never sees a code or a secret.
ALTER TABLE api_keys ADD COLUMN read_only boolean NOT NULL DEFAULT false;

-- The operator audit trail: one row per state-changing operator call, written in the
-- transaction of the change it records, so a change never exists without its row (nor a
-- row without its change). Who is the API key (its ID and its label at the time: a later
-- relabel or revocation does not rewrite history); what changed is a JSON object of
-- fields, never a secret (codes, keys and signing secrets are named, not copied).
CREATE TABLE operator_audit_events (
    id             uuid PRIMARY KEY,
    account_id     uuid NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    at             timestamptz NOT NULL DEFAULT clock_timestamp(),
    api_key_id     uuid,   -- NULL for changes made by fleetreg itself (the CLI's account setup)
    api_key_label  text NOT NULL DEFAULT '',
    action         text NOT NULL,
    target_type    text NOT NULL,
    target_id      text NOT NULL,
    changes        jsonb NOT NULL DEFAULT '{}'
);
-- Newest first for the account, with the ID as the tie-break of the keyset cursor.
CREATE INDEX operator_audit_events_account ON operator_audit_events (account_id, at DESC, id DESC);
-- A device's (or any target's) own trail, for `devices show`.
CREATE INDEX operator_audit_events_target ON operator_audit_events (account_id, target_id, at DESC);
-- Retention prunes by age across accounts, oldest first, in small batches.
CREATE INDEX operator_audit_events_at ON operator_audit_events (at);
CREATE INDEX registration_decisions_decided_at ON registration_decisions (decided_at);
