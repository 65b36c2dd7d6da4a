-- Retention of device certificates (docs/operations.md, "Retention"): the operator's
-- retention job deletes the rows expired for longer than
-- FLEETREG_RETAIN_EXPIRED_CERTIFICATES_DAYS, oldest first, in small batches; this index
-- finds them without reading the whole table every round.
CREATE INDEX device_certificates_expiry ON device_certificates (not_after);
