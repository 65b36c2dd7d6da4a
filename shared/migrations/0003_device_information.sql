-- What a device running the reference client reported in its information call
-- (apv/v27 step 1): its fingerprint and the digest of the device secret it holds.
-- The registration decision (step 2) and the service registration (step 5) read it.
-- Rows are written only for codes that exist, so unknown codes cannot fill the table.
CREATE TABLE device_information (
    bulk_identification_code text NOT NULL REFERENCES bulk_identification_codes (code) ON DELETE CASCADE,
    hardware_id              text NOT NULL,
    fingerprint              text NOT NULL,
    secret_digest            text NOT NULL DEFAULT '',
    os_label                 text NOT NULL DEFAULT '',
    updated_at               timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (bulk_identification_code, hardware_id)
);
