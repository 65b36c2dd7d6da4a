-- Bulk registration: the rows of an uploaded CSV, kept per registration until and
-- after publishing. Registration keys are stored only as keyed digests.

ALTER TABLE registrations DROP CONSTRAINT IF EXISTS registrations_check;
ALTER TABLE registrations ADD CONSTRAINT registrations_kind_status CHECK (
    (kind = 'auto' AND status IN ('active', 'paused'))
    -- 'uploading' is internal: rows are being streamed in and checked; it never
    -- shows in listings and a rejected upload deletes it with its rows.
    OR (kind = 'bulk' AND status IN ('uploading', 'configured', 'publishing', 'preregistered'))
);
ALTER TABLE registrations
    ADD COLUMN row_count       integer NOT NULL DEFAULT 0,
    ADD COLUMN published_count integer NOT NULL DEFAULT 0,
    ADD COLUMN conflict_count  integer NOT NULL DEFAULT 0,
    ADD COLUMN file_name       text NOT NULL DEFAULT '';

CREATE TABLE bulk_rows (
    registration_id          uuid NOT NULL REFERENCES registrations (id) ON DELETE CASCADE,
    line                     integer NOT NULL,
    hardware_id              text NOT NULL,
    registration_key_digest  bytea NOT NULL,
    name                     text NOT NULL,
    category_a               text NOT NULL DEFAULT '',
    category_b               text NOT NULL DEFAULT '',
    -- A pending row becomes a preregistered device when published, and is then deleted
    -- (the device is the record); a row whose hardware ID was taken between upload and
    -- publish stays, as a conflict, to be reported per row.
    state                    text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'conflict')),
    PRIMARY KEY (registration_id, line)
);
-- Uploads check their hardware IDs against the rows other uploads have not published yet.
CREATE INDEX bulk_rows_pending_hardware_id ON bulk_rows (hardware_id) WHERE state = 'pending';

-- The brute-force guard counts recent refused claims per product and hardware ID.
CREATE INDEX registration_decisions_refused
    ON registration_decisions (product_id, claimed_hardware_id, decided_at) WHERE decision = 'refused';
