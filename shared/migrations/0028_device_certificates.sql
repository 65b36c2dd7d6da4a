-- Device certificates from a CSR (docs/device-identity.md, "Device certificates").
--
-- Each account's issuing CA: created on first use (at the latest with an auto
-- registration), its certificate in the clear and its private key sealed with
-- FLEETREG_SECRET_KEY (AES-256-GCM, the account's ID as associated data: the SecretBox of
-- shared/domain/webhooks.py under a purpose of its own), so a copy of the registry alone
-- signs nothing. Several instances creating it at once: INSERT ... ON CONFLICT DO NOTHING,
-- and every one reads back the winner.
CREATE TABLE issuing_cas (
    account_id   uuid PRIMARY KEY REFERENCES accounts (id) ON DELETE CASCADE,
    certificate  bytea NOT NULL,  -- DER
    sealed_key   bytea NOT NULL,  -- nonce + AES-GCM(PKCS#8 PEM of the P-256 key)
    created_at   timestamptz NOT NULL DEFAULT now()
);

-- Every certificate issued to a device. No foreign key to devices: a deleted device's
-- certificates stay (revoked) so that the account's CRL keeps listing them until they
-- expire. ``public_key_sha256`` finds the current certificate of a key for a renewal
-- proven by that key (EST simplereenroll without the device secret).
CREATE TABLE device_certificates (
    serial             text PRIMARY KEY,  -- lower-case hex, no leading zeros
    account_id         uuid NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    device_id          uuid NOT NULL,
    hardware_id        text NOT NULL,
    public_key_sha256  bytea NOT NULL,
    certificate        bytea NOT NULL,  -- DER
    not_after          timestamptz NOT NULL,
    issued_at          timestamptz NOT NULL DEFAULT now(),
    revoked_at         timestamptz,
    revocation_reason  text CHECK (revocation_reason IN ('disabled', 'reset', 'deleted'))
);
CREATE INDEX device_certificates_device ON device_certificates (device_id, issued_at DESC);
CREATE INDEX device_certificates_key ON device_certificates (account_id, public_key_sha256)
    WHERE revoked_at IS NULL;
-- The CRL's read: the account's revoked certificates not yet expired.
CREATE INDEX device_certificates_revoked ON device_certificates (account_id, not_after)
    WHERE revoked_at IS NOT NULL;
