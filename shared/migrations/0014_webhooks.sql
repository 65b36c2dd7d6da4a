-- Webhooks (issue 13): an account's HTTP endpoints and the registry events they get,
-- signed as the Standard Webhooks specification says. The notifier service turns each
-- consumed event into one delivery row per matching webhook (idempotent on the event ID),
-- then sends due deliveries and records every attempt. docs/operations.md, "Webhooks".
CREATE TABLE webhooks (
    id                uuid PRIMARY KEY,
    account_id        uuid NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    url               text NOT NULL,
    events            text[] NOT NULL,
    -- The signing secret, AES-256-GCM encrypted with a key derived from
    -- FLEETREG_SECRET_KEY: every delivery is signed with it, so a digest would not do.
    secret_ciphertext bytea NOT NULL,
    created_at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX webhooks_account ON webhooks (account_id, created_at);

-- One event for one webhook. ``payload`` is the exact JSON body that is signed and sent
-- on every attempt; ``event_id`` is its webhook-id header. Deliveries of one webhook that
-- share an ordering key (a device's ID) go out one at a time in (occurred_at, seq) order.
CREATE TABLE webhook_deliveries (
    id              uuid PRIMARY KEY,
    webhook_id      uuid NOT NULL REFERENCES webhooks (id) ON DELETE CASCADE,
    event_id        text NOT NULL,
    event_type      text NOT NULL,
    ordering_key    text NOT NULL,
    occurred_at     timestamptz NOT NULL,
    seq             bigint GENERATED ALWAYS AS IDENTITY,
    payload         text NOT NULL,
    -- The event of this webhook that must go first, when the notifier may consume it later
    -- than this one (a device's registration before its confirmation: different topics).
    after_event_id  text,
    status          text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts        integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    -- Set while one notifier instance sends it; an instance that dies lets it lapse.
    leased_until    timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now(),
    finished_at     timestamptz,
    -- A Kafka record consumed twice (a crash before the offset commit) adds nothing.
    UNIQUE (webhook_id, event_id)
);
-- The delivery worker: a webhook's due deliveries in the order it takes them (so a claim
-- reads a few index entries, not the whole backlog), what is ahead of one in its order,
-- and the deliveries in flight (a lease is cleared when the attempt is recorded).
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (webhook_id, next_attempt_at, seq)
    WHERE status = 'pending';
CREATE INDEX webhook_deliveries_leased ON webhook_deliveries (webhook_id) WHERE leased_until IS NOT NULL;
CREATE INDEX webhook_deliveries_order ON webhook_deliveries (webhook_id, ordering_key, occurred_at, seq)
    WHERE status = 'pending';
-- The operator's listing, newest first, with the ID as the keyset cursor's tie-break.
CREATE INDEX webhook_deliveries_listing ON webhook_deliveries (webhook_id, created_at DESC, id DESC);
-- Retention prunes finished deliveries by age, oldest first, in small batches.
CREATE INDEX webhook_deliveries_finished ON webhook_deliveries (finished_at) WHERE status <> 'pending';

-- Every attempt: when, the HTTP status (NULL when there was no answer: the error says
-- why) and how long it took.
CREATE TABLE webhook_attempts (
    delivery_id uuid NOT NULL REFERENCES webhook_deliveries (id) ON DELETE CASCADE,
    attempt     integer NOT NULL,
    at          timestamptz NOT NULL,
    http_status integer,
    error       text NOT NULL DEFAULT '',
    latency_ms  double precision NOT NULL,
    PRIMARY KEY (delivery_id, attempt)
);

-- registration.refused is a per-minute summary: refusals of the account's own codes are
-- counted here (only for accounts with a webhook that wants them), and a closed minute
-- is taken out (DELETE ... RETURNING, so one instance takes it) into one delivery per webhook.
CREATE TABLE webhook_refusal_counts (
    account_id uuid NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    minute     timestamptz NOT NULL,
    reason     text NOT NULL CHECK (reason IN ('throttled', 'quota', 'wrong_key', 'other')),
    count      integer NOT NULL,
    PRIMARY KEY (account_id, minute, reason)
);
CREATE INDEX webhook_refusal_counts_minute ON webhook_refusal_counts (minute);

-- device.offline: the last_seen_at each device was announced offline at. A conditional
-- upsert takes a transition once, whichever notifier instance sweeps first; a device
-- seen again and lost again is a new transition (a later last_seen_at).
CREATE TABLE webhook_offline_announcements (
    device_id    uuid PRIMARY KEY REFERENCES devices (id) ON DELETE CASCADE,
    last_seen_at timestamptz NOT NULL
);
CREATE INDEX devices_last_seen ON devices (account_id, last_seen_at) WHERE lifecycle = 'provisioned';
