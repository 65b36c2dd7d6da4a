-- Devices the operator deleted, remembered for FLEETREG_STALE_CREDENTIAL_SECONDS (issue 22):
-- a board still holding a deleted device's secret is told "deleted" (401, not counted
-- against its address) rather than counted as a guesser of device secrets, which used to
-- get its whole NAT site throttled. Nothing secret is kept: the secret is derived from the
-- device ID and its last credential generation (docs/security.md). Rows past the window
-- are swept by the operator service's retention loop (shared/db/retention.py).
CREATE TABLE deleted_devices (
    device_id              uuid PRIMARY KEY,
    credential_generation  integer NOT NULL,
    deleted_at             timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX deleted_devices_deleted_at ON deleted_devices (deleted_at);
