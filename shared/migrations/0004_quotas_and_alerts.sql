-- Limits on device creation (issue 9) and the security alerts an operator lists.

-- An auto registration's device quota: at most this many devices (new devices and
-- clones; a retry of a device is never counted). NULL: no quota.
ALTER TABLE registrations ADD COLUMN max_devices integer;
ALTER TABLE registrations ADD CONSTRAINT registrations_max_devices CHECK (
    max_devices IS NULL OR (kind = 'auto' AND max_devices > 0)
);

-- "Devices of a registration" is counted under the registration's row lock, only for
-- a registration with a quota; it is an index-only count on devices_registration (0001).
-- "Clones of H created in the last window" is read from the family deduplication
-- loads anyway (devices_stem, 0001) and decided in memory, so it needs no index of its own.

-- Security alerts: a pattern the operator should look at, raised in the transaction of the
-- decision that crossed its threshold. One row per (product, kind, hardware ID), updated by
-- every later occurrence; nothing here ever refuses a device.
CREATE TABLE security_alerts (
    id              uuid PRIMARY KEY,
    account_id      uuid NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    product_id      uuid NOT NULL REFERENCES products (id) ON DELETE CASCADE,
    -- bulk_key_guessing: wrong registration keys for one hardware ID of a bulk product.
    kind            text NOT NULL CHECK (kind IN ('bulk_key_guessing')),
    hardware_id     text NOT NULL,
    -- Whether the hardware ID is listed in a published bulk registration (a real device
    -- is being aimed at) or not (someone is probing IDs).
    listed          boolean NOT NULL,
    -- Wrong keys for the hardware ID within the window, as of the last occurrence.
    wrong_keys      integer NOT NULL CHECK (wrong_keys > 0),
    window_seconds  integer NOT NULL CHECK (window_seconds > 0),
    first_seen_at   timestamptz NOT NULL DEFAULT now(),
    last_seen_at    timestamptz NOT NULL DEFAULT now(),
    UNIQUE (product_id, kind, hardware_id)
);
-- The operator's listing: an account's alerts, most recent first.
CREATE INDEX security_alerts_account ON security_alerts (account_id, last_seen_at DESC, id DESC);
