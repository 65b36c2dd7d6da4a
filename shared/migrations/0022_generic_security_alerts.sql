-- Security alerts beyond bulk key guessing (issue 22, docs/security.md "Security alerts"):
--
-- * hardware_id_squatting: one source reached the per-source clone rate or the clone limit
--   for one claimed hardware ID (someone claims a real device's hardware ID, then clones it);
-- * quota_filled: an auto registration's max_devices was reached (the source that took the
--   last place is recorded);
-- * two_sources_before_ready: two sources reclaimed one hardware ID before it confirmed.
--
-- Additive, so that the previous release still works on this schema during a rolling update:
-- its alerts (bulk_key_guessing) keep listed and wrong_keys and the unique key
-- (product_id, kind, hardware_id); it never writes the new columns, so a bulk_key_guessing
-- alert's count is read from wrong_keys, which both releases write.
ALTER TABLE security_alerts DROP CONSTRAINT security_alerts_kind_check;
ALTER TABLE security_alerts ADD CONSTRAINT security_alerts_kind_check CHECK (
    kind IN ('bulk_key_guessing', 'hardware_id_squatting', 'quota_filled', 'two_sources_before_ready')
);
-- The source (shared.throttle.source_of: an IPv4 address or an IPv6 /64) of the last
-- occurrence; '' where no one source is meant (bulk_key_guessing: guesses come from anywhere).
ALTER TABLE security_alerts ADD COLUMN source text NOT NULL DEFAULT '';
-- The kind's count as of the last occurrence: wrong keys within the window
-- (bulk_key_guessing), clones created by the source within the window
-- (hardware_id_squatting), devices of the registration (quota_filled), claims from distinct
-- sources (two_sources_before_ready). NULL only on rows the previous release wrote.
ALTER TABLE security_alerts ADD COLUMN count integer CHECK (count > 0);
UPDATE security_alerts SET count = wrong_keys WHERE count IS NULL;
-- listed and wrong_keys are bulk_key_guessing's; the other kinds leave them NULL.
ALTER TABLE security_alerts ALTER COLUMN listed DROP NOT NULL;
ALTER TABLE security_alerts ALTER COLUMN wrong_keys DROP NOT NULL;
ALTER TABLE security_alerts ADD CONSTRAINT security_alerts_bulk_fields CHECK (
    kind <> 'bulk_key_guessing' OR (listed IS NOT NULL AND wrong_keys IS NOT NULL)
);
-- A quota has no window: window_seconds is NULL for quota_filled.
ALTER TABLE security_alerts ALTER COLUMN window_seconds DROP NOT NULL;
