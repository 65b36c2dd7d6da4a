-- Step-1 records of the reference protocol are forgotten after a retention time (the
-- intake deletes old ones periodically): anyone holding the code can write one for any
-- hardware ID, so the table must not grow without bound.
CREATE INDEX device_information_updated_at ON device_information (updated_at);
