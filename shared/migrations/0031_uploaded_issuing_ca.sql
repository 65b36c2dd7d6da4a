-- An issuing CA the operator uploads (docs/device-identity.md, "Bringing your own
-- intermediate"): ``certificate`` is then the intermediate, ``sealed_key`` its private key
-- sealed exactly as a self-made CA's; ``chain`` the certificates above it the operator
-- gave (DER, each signing the one before; EST ``cacerts`` and the two-call answer hand
-- them out); ``uploaded_at`` NULL for the self-made CA. Replaced only while the account
-- holds no unexpired device certificate (the CRL is signed by one CA).
ALTER TABLE issuing_cas ADD COLUMN chain bytea[] NOT NULL DEFAULT '{}';
ALTER TABLE issuing_cas ADD COLUMN uploaded_at timestamptz;
