-- Attestation per auto registration (issue 25, docs/device-identity.md): how a device proves
-- it belongs to the registration. 'code' (the Bulk Identification Code alone, as before, the
-- default) or 'derived_key' (each device proves a key derived from the registration's group
-- key: base64(HMAC-SHA256(group key, hardware ID)), as Azure DPS's enrollment groups do).
-- Chosen at creation, never changed; kept through a code rotation. Bulk registrations keep
-- 'code' (their rows' keys are their per-device identity).
ALTER TABLE registrations ADD COLUMN attestation text NOT NULL DEFAULT 'code'
    CHECK (attestation IN ('code', 'derived_key'));
-- The 256-bit group keys of a derived_key registration, primary and secondary (rotated one
-- at a time), sealed with FLEETREG_SECRET_KEY (AES-256-GCM, shared.domain.derived_keys):
-- never stored or logged in the clear. NULL for every other registration.
ALTER TABLE registrations ADD COLUMN primary_key_sealed bytea;
ALTER TABLE registrations ADD COLUMN secondary_key_sealed bytea;
ALTER TABLE registrations ADD CONSTRAINT registrations_group_keys_check CHECK (
    (attestation = 'derived_key') = (primary_key_sealed IS NOT NULL AND secondary_key_sealed IS NOT NULL)
);

-- The nonces of accepted proofs of derived keys, so that one proof is accepted once: every
-- intake instance inserts here before it publishes a claim (a replay finds its row). A row is
-- needed only until its proof expires (a later replay is refused as expired): the intake's
-- sweep deletes expired rows. Additive: the previous release ignores it.
CREATE TABLE proof_nonces (
    registration_id uuid NOT NULL REFERENCES registrations (id) ON DELETE CASCADE,
    hardware_id     text NOT NULL,  -- lower case: one ID in any case
    nonce           text NOT NULL,
    expires_at      timestamptz NOT NULL,
    PRIMARY KEY (registration_id, hardware_id, nonce)
);
CREATE INDEX proof_nonces_expires ON proof_nonces (expires_at);
