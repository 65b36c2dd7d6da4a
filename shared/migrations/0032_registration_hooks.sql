-- The registration hook of an auto registration (docs/registration-hook.md): the URL the
-- operator's service answers on (NULL: no hook, every claim decided as before), the
-- call's timeout, what a failed call does (``closed``: the device is answered pending and
-- retries; ``open``: decided without the hook), and the signing secret, sealed as a
-- webhook's is (its own purpose, the registration's ID as associated data), shown once.
ALTER TABLE registrations ADD COLUMN hook_url text;
ALTER TABLE registrations ADD COLUMN hook_timeout_ms integer NOT NULL DEFAULT 2000
    CHECK (hook_timeout_ms BETWEEN 50 AND 10000);
ALTER TABLE registrations ADD COLUMN hook_failure text NOT NULL DEFAULT 'closed'
    CHECK (hook_failure IN ('closed', 'open'));
ALTER TABLE registrations ADD COLUMN hook_secret_sealed bytea;
ALTER TABLE registrations ADD CONSTRAINT registrations_hook_secret
    CHECK ((hook_url IS NULL) = (hook_secret_sealed IS NULL));
