-- Hardware IDs are unique within an account case-insensitively, as Azure DPS
-- registration IDs are (../shared/spec/domain.md, "Identity rules"): B827EB8905E5 and
-- b827eb8905e5 are one device. The registry keeps the case it was first given, for
-- display; lookups compare lower-case.
--
-- A registry that already holds two cases of one ID cannot be converted without a
-- person deciding which device is which, so this migration refuses to run and lists
-- them (docs/operations.md, "Upgrade: hardware IDs that differ only in case").
DO $$
DECLARE
    clashes text;
BEGIN
    SELECT string_agg(format('account %s: %s', account_id, ids), '; ')
      INTO clashes
      FROM (SELECT account_id, string_agg(hardware_id, ', ' ORDER BY hardware_id) AS ids
              FROM devices GROUP BY account_id, lower(hardware_id) HAVING count(*) > 1
             ORDER BY account_id LIMIT 100) AS c;
    IF clashes IS NOT NULL THEN
        RAISE EXCEPTION 'hardware IDs that differ only in case must be resolved before this migration: %', clashes
            USING HINT = 'rename or delete one device of each pair; see docs/operations.md';
    END IF;
END $$;

ALTER TABLE devices DROP CONSTRAINT devices_account_id_hardware_id_key;
CREATE UNIQUE INDEX devices_account_hardware_id_ci ON devices (account_id, lower(hardware_id));
-- The family of a claim (H and its H-N) is found by the lower-case stem.
DROP INDEX devices_stem;
ALTER TABLE devices DROP COLUMN hardware_id_stem;
ALTER TABLE devices ADD COLUMN hardware_id_stem text
    GENERATED ALWAYS AS (lower(regexp_replace(hardware_id, '-[0-9]+$', ''))) STORED;
CREATE INDEX devices_stem ON devices (account_id, hardware_id_stem);
-- Uploads not yet published are compared case-insensitively too.
DROP INDEX bulk_rows_pending_hardware_id;
CREATE INDEX bulk_rows_pending_hardware_id ON bulk_rows (lower(hardware_id)) WHERE state = 'pending';
