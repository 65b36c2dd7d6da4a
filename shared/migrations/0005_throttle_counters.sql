-- Counters of refused calls per source address, shared by every instance of every
-- service: the storage behind the `limits` library's fixed-window strategy
-- (shared/db/throttle.py). One row per (limit, source) key; a row whose window
-- has ended is reset by the next increment and deleted by the periodic sweep.
CREATE TABLE throttle_counters (
    key        text PRIMARY KEY,
    count      integer NOT NULL,
    expires_at timestamptz NOT NULL
);
CREATE INDEX throttle_counters_expires_at ON throttle_counters (expires_at);
