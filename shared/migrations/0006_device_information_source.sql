-- What a reference client reports at apv/v27 step 1 is remembered per source address
-- as well: step 2 (and step 5) read the record written from the caller's own address,
-- so nobody elsewhere can overwrite a rebooting device's fingerprint and secret digest
-- between its steps 1 and 2 (which would make the real device a clone). Rows written
-- before this migration have the empty source and are read by no one any more: the
-- next boot of each device writes its own.
ALTER TABLE device_information ADD COLUMN source text NOT NULL DEFAULT '';
ALTER TABLE device_information DROP CONSTRAINT device_information_pkey;
ALTER TABLE device_information ADD PRIMARY KEY (bulk_identification_code, hardware_id, source);
