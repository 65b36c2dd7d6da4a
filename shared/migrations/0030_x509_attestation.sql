-- X.509 attestation (issue 25, docs/device-identity.md): an auto registration in 'x509' mode
-- trusts the CA certificates its operator uploaded and verified (proof of possession of the
-- CA's key: a certificate whose subject CN is the CA's verification code, signed by it), and
-- reads a device certificate's hardware ID from its subject CN or one subjectAltName.
ALTER TABLE registrations DROP CONSTRAINT registrations_attestation_check;
ALTER TABLE registrations ADD CONSTRAINT registrations_attestation_check
    CHECK (attestation IN ('code', 'derived_key', 'x509'));
ALTER TABLE registrations ADD COLUMN hardware_id_from text NOT NULL DEFAULT 'cn'
    CHECK (hardware_id_from IN ('cn', 'san:dns', 'san:uri'));

-- An attestation CA of one auto registration (so of one account: never trusted for another).
-- ``certificate`` is its DER (public: no private key is ever uploaded); ``verified_at`` NULL
-- until the proof of possession, and an unverified CA trusts nothing. ``crl`` is the DER of
-- the last CRL the operator uploaded (its signature checked with this CA's key); fleetreg
-- never fetches CRL or OCSP URLs.
CREATE TABLE attestation_cas (
    id                uuid PRIMARY KEY,
    account_id        uuid NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    registration_id   uuid NOT NULL REFERENCES registrations (id) ON DELETE CASCADE,
    certificate       bytea NOT NULL,
    fingerprint       text NOT NULL,  -- SHA-256 of the DER, lower-case hex
    subject           text NOT NULL,  -- RFC 4514, for people
    serial            text NOT NULL,  -- lower-case hex
    not_after         timestamptz NOT NULL,
    verification_code text NOT NULL,
    verified_at       timestamptz,
    crl               bytea,
    crl_uploaded_at   timestamptz,
    crl_next_update   timestamptz,
    created_at        timestamptz NOT NULL DEFAULT now(),
    UNIQUE (registration_id, fingerprint)
);
CREATE INDEX attestation_cas_account ON attestation_cas (account_id, registration_id);

-- Serials (lower-case hex, no leading zeros) the operator revoked under one CA: a device
-- certificate (or intermediate) the CA issued with such a serial is refused.
CREATE TABLE attestation_ca_revocations (
    ca_id      uuid NOT NULL REFERENCES attestation_cas (id) ON DELETE CASCADE,
    serial     text NOT NULL,
    revoked_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (ca_id, serial)
);
