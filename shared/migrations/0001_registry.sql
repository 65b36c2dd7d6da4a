-- The canonical device registry: accounts, products, codes, registrations, devices.
-- Rules from the domain page are enforced here where a constraint can hold them,
-- so that any number of service instances cannot break them.

CREATE TABLE accounts (
    id          uuid PRIMARY KEY,
    name        text NOT NULL UNIQUE,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- Operator API keys, stored only as SHA-256 digests of the (high-entropy) key.
CREATE TABLE api_keys (
    id          uuid PRIMARY KEY,
    account_id  uuid NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    key_digest  bytea NOT NULL UNIQUE,
    key_prefix  text NOT NULL,  -- the first characters, to tell keys apart in listings
    label       text NOT NULL DEFAULT '',
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);

CREATE TABLE products (
    id                uuid PRIMARY KEY,
    account_id        uuid NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    name              text NOT NULL,
    status            text NOT NULL DEFAULT 'new' CHECK (status IN ('new', 'locked')),
    product_code      text UNIQUE,
    -- A product serves one auto registration or bulk registrations, never both.
    registration_kind text CHECK (registration_kind IN ('auto', 'bulk')),
    created_at        timestamptz NOT NULL DEFAULT now(),
    locked_at         timestamptz,
    UNIQUE (account_id, name),
    CHECK ((status = 'locked') = (product_code IS NOT NULL))
);

CREATE TABLE product_services (
    id               uuid PRIMARY KEY,   -- also the service's 36-character provisioning ID
    product_id       uuid NOT NULL REFERENCES products (id) ON DELETE CASCADE,
    position         integer NOT NULL,
    name             text NOT NULL,
    service_type     text NOT NULL,
    type_code        integer NOT NULL,
    port             integer NOT NULL CHECK (port BETWEEN 1 AND 65535),
    enabled          boolean NOT NULL,
    is_bulk_service  boolean NOT NULL DEFAULT false,
    UNIQUE (product_id, name),
    UNIQUE (product_id, position)
);
-- Exactly one bulk service (type rmt3 = 35) per product.
CREATE UNIQUE INDEX product_services_one_bulk ON product_services (product_id) WHERE is_bulk_service;

-- Bulk Identification Codes. Rotation revokes the old code and adds a new one;
-- revoked codes stay so that a device presenting one gets "revoked", not "unknown".
CREATE TABLE bulk_identification_codes (
    code        text PRIMARY KEY CHECK (code ~ '^[0-9A-F]{8}-[0-9A-F]{4}-[0-9A-F]{4}-[0-9A-F]{4}-[0-9A-F]{12}$'),
    product_id  uuid NOT NULL REFERENCES products (id) ON DELETE CASCADE,
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);
CREATE UNIQUE INDEX bulk_identification_codes_one_active
    ON bulk_identification_codes (product_id) WHERE revoked_at IS NULL;

CREATE TABLE registrations (
    id          uuid PRIMARY KEY,
    account_id  uuid NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    product_id  uuid NOT NULL REFERENCES products (id),
    kind        text NOT NULL CHECK (kind IN ('auto', 'bulk')),
    status      text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    CHECK (
        (kind = 'auto' AND status IN ('active', 'paused'))
        OR (kind = 'bulk' AND status IN ('configured', 'publishing', 'preregistered'))
    )
);
CREATE UNIQUE INDEX registrations_one_auto_per_product ON registrations (product_id) WHERE kind = 'auto';

CREATE SEQUENCE service_uid_seq;

CREATE TABLE devices (
    id                     uuid PRIMARY KEY,
    account_id             uuid NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    product_id             uuid NOT NULL REFERENCES products (id),
    registration_id        uuid NOT NULL REFERENCES registrations (id),
    hardware_id            text NOT NULL,
    -- The hardware ID a device asked for; differs from hardware_id for clones (H -> H-1).
    claimed_hardware_id    text NOT NULL,
    -- hardware_id without an index suffix: every ID an index could collide with shares it.
    hardware_id_stem       text GENERATED ALWAYS AS (regexp_replace(hardware_id, '-[0-9]+$', '')) STORED,
    name                   text NOT NULL,
    category_a             text NOT NULL DEFAULT '',
    category_b             text NOT NULL DEFAULT '',
    lifecycle              text NOT NULL CHECK (lifecycle IN ('preregistered', 'registered', 'provisioned')),
    disabled               boolean NOT NULL DEFAULT false,
    fingerprint            text NOT NULL DEFAULT '',
    registration_key_digest bytea,
    -- Bumped by "reset for re-provisioning": the device secret is derived from it,
    -- so a reset invalidates the old secret without storing any secret.
    credential_generation  integer NOT NULL DEFAULT 1,
    created_at             timestamptz NOT NULL DEFAULT now(),
    registered_at          timestamptz,
    provisioned_at         timestamptz,
    last_seen_at           timestamptz,
    -- No two devices of an account ever share a hardware ID.
    UNIQUE (account_id, hardware_id)
);
CREATE INDEX devices_stem ON devices (account_id, hardware_id_stem);
CREATE INDEX devices_registration ON devices (registration_id);

-- One row per registration request: the deduplication service's processed-message
-- record (request_id) and the audit trail of every decision.
CREATE TABLE registration_decisions (
    request_id           uuid PRIMARY KEY,
    account_id           uuid REFERENCES accounts (id) ON DELETE CASCADE,
    product_id           uuid REFERENCES products (id),
    device_id            uuid REFERENCES devices (id) ON DELETE SET NULL,
    claimed_hardware_id  text NOT NULL,
    assigned_hardware_id text,
    decision             text NOT NULL CHECK (decision IN ('new', 'same', 'clone', 'refused')),
    reason               text NOT NULL DEFAULT '',
    idempotency_key      text,
    protocol             text NOT NULL DEFAULT 'native',
    status               text NOT NULL CHECK (status IN ('decided', 'ready', 'refused')),
    received_at          timestamptz NOT NULL,
    decided_at           timestamptz NOT NULL DEFAULT now(),
    ready_at             timestamptz
);
CREATE INDEX registration_decisions_device ON registration_decisions (device_id);
CREATE INDEX registration_decisions_account ON registration_decisions (account_id, decided_at);
-- Not unique: every retry with the same key is a request of its own in the audit trail.
CREATE INDEX registration_decisions_idempotency
    ON registration_decisions (product_id, idempotency_key) WHERE idempotency_key IS NOT NULL;

-- Lifecycle events other than registration decisions (ready, disabled, reset, ...).
CREATE TABLE device_events (
    id          bigserial PRIMARY KEY,
    device_id   uuid NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
    kind        text NOT NULL,
    detail      jsonb NOT NULL DEFAULT '{}',
    at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX device_events_device ON device_events (device_id, at);

-- One provisioning file per enabled service of the device's product. The service UID
-- stays with the device; a reset bumps the generation and so the derived secret. Content is rendered deterministically from these rows and the derived
-- service secret, so no secret is stored; size and digest form the device's manifest.
CREATE TABLE provisioning_files (
    device_id           uuid NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
    product_service_id  uuid NOT NULL REFERENCES product_services (id),
    generation          integer NOT NULL,
    service_uid         text NOT NULL UNIQUE,
    file_name           text NOT NULL,
    size                integer NOT NULL,
    sha256              text NOT NULL,
    created_at          timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (device_id, product_service_id)
);
