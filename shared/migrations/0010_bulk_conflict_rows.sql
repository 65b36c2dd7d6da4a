-- A bulk registration's conflict rows are read on every GET of it (a client waiting
-- for a publish polls it): without this index each read scanned the registration's
-- rows, or bulk_rows whole, a core's worth of work per poll against the publish itself.
CREATE INDEX bulk_rows_conflicts ON bulk_rows (registration_id, line) WHERE state = 'conflict';
