-- The registration hook's calls (docs/registration-hook.md, "Where the decision waits"):
-- one row per registration attempt that consults a hook, keyed by the call's ID (the
-- registration and the device's Idempotency-Key, else its request ID), so a retry with the
-- same key finds its answer. While the outcome is not 'allow' or 'failed_open' the row's
-- device is a reservation: decided and recorded by deduplication, its
-- ``registration.decided`` withheld (``decided``: the event to send when the hook allows).
CREATE TABLE registration_hook_calls (
    call_id         text PRIMARY KEY,
    registration_id uuid NOT NULL REFERENCES registrations (id) ON DELETE CASCADE,
    account_id      uuid NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    -- The reserved device; NULL once deleted (a denial or an expired reservation deletes it).
    device_id       uuid REFERENCES devices (id) ON DELETE SET NULL,
    -- The latest request attached: the one the device waits on, answered by the ruling.
    request_id      uuid NOT NULL,
    -- The hook's request (shared.domain.hooks.HookRequest's fields, but call_id).
    request         jsonb NOT NULL,
    -- The registration.decided event's fields, sent when the hook allows.
    decided         jsonb NOT NULL,
    -- waiting: asked, not yet called; calling: a call in flight since called_at; allow, deny:
    -- the hook's answers; failed_open: decided without the hook (policy open); any other
    -- value: the last failure of a fail-closed call (timeout, connection, status, malformed,
    -- redirect, breaker_open, refused_address), tried again on the device's next retry;
    -- expired: released by the sweep, never answered.
    outcome         text NOT NULL DEFAULT 'waiting',
    answer          jsonb,
    http_status     integer,
    latency_ms      integer,
    attempts        integer NOT NULL DEFAULT 0,
    reserved_until  timestamptz NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    called_at       timestamptz,
    answered_at     timestamptz
);
CREATE INDEX registration_hook_calls_recent ON registration_hook_calls (registration_id, created_at DESC);
CREATE INDEX registration_hook_calls_device ON registration_hook_calls (device_id);
CREATE INDEX registration_hook_calls_open ON registration_hook_calls (reserved_until)
    WHERE outcome NOT IN ('allow', 'deny', 'failed_open', 'expired');

-- The hook's enrichment data (an allow's ``data``: string keys to string values), delivered
-- to the device as one more provisioning file (native protocol only). NULL: none.
ALTER TABLE devices ADD COLUMN hook_data jsonb;
