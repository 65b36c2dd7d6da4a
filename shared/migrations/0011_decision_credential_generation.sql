-- The device's credential generation when the request was decided. A poll of the request
-- hands out the device secret (and, with include=files, the files) only while the device
-- is still at that generation: an operator reset bumps it, and a request ID from before
-- the reset must not yield the new secret. Rows decided before this migration hold NULL,
-- read as 1, the generation every device starts at (exact for a device never reset).
ALTER TABLE registration_decisions ADD COLUMN credential_generation integer;
