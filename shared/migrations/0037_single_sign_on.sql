-- Single sign-on per account (issue 28): the account's OpenID Connect provider, and the
-- e-mail domains whose people it signs in. Sign-in is e-mail first: the address's domain
-- picks the account (so a domain belongs to one account at most), else the password form.
CREATE TABLE sso_providers (
    account_id            uuid PRIMARY KEY REFERENCES accounts (id) ON DELETE CASCADE,
    issuer                text NOT NULL,
    client_id             text NOT NULL,
    client_secret_sealed  bytea NOT NULL,   -- sealed with the keyring (shared/domain/webhooks.py SecretBox)
    groups_claim          text NOT NULL DEFAULT 'groups',
    group_roles           jsonb NOT NULL DEFAULT '{}',  -- a group's name -> viewer|operator|admin
    default_role          text CHECK (default_role IN ('viewer', 'operator', 'admin')),  -- NULL: no group, no entry
    required              boolean NOT NULL DEFAULT false,  -- everyone but owners signs in through it
    created_at            timestamptz NOT NULL DEFAULT now(),
    updated_at            timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE sso_domains (
    domain      text PRIMARY KEY,  -- lower case, IDNA (ASCII) form
    account_id  uuid NOT NULL REFERENCES sso_providers (account_id) ON DELETE CASCADE
);
CREATE INDEX sso_domains_account ON sso_domains (account_id);
