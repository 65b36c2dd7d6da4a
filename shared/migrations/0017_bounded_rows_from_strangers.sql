-- Strangers write nothing unbounded (issue 21).
--
-- 1. A claim with a revoked code (a stale board after a rotation, or whoever kept an
--    old image) keeps at most one decision row per product, hardware ID (any case) and
--    hour: deduplication sets revoked_hour (the claim's hour, UTC) on such refusals and
--    inserts with ON CONFLICT DO NOTHING. Rows written before this migration have no
--    revoked_hour and are left as they are (nothing to deduplicate, no audit row lost).
ALTER TABLE registration_decisions ADD COLUMN revoked_hour timestamptz;
CREATE UNIQUE INDEX registration_decisions_revoked_hourly
    ON registration_decisions (product_id, lower(claimed_hardware_id), revoked_hour)
    WHERE revoked_hour IS NOT NULL;

-- 2. Reference protocol step-1 records stay one per (code, hardware ID, source) (the
--    primary key since 0006), and the hardware IDs a source reports for the first time
--    are capped per minute: created_at is when a record was first written (updated_at
--    moves with every overwrite), counted per source over the last minute.
ALTER TABLE device_information ADD COLUMN created_at timestamptz;
UPDATE device_information SET created_at = updated_at;
ALTER TABLE device_information
    ALTER COLUMN created_at SET NOT NULL,
    ALTER COLUMN created_at SET DEFAULT now();
CREATE INDEX device_information_source_created ON device_information (source, created_at);
