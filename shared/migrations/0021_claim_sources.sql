-- Where each claim came from (shared.throttle.source_of: an IPv4 address or an IPv6 /64),
-- so that deduplication can bound what one source creates and notice two sources claiming
-- one hardware ID before it is confirmed (issue 22, docs/security.md). Not a secret; kept
-- as long as the decision row (retention of registration_decisions applies).
ALTER TABLE registration_decisions ADD COLUMN source text;
-- The source of the claim that created the device ('' for bulk rows and devices created
-- before this migration): the clone limits count per source.
ALTER TABLE devices ADD COLUMN created_source text NOT NULL DEFAULT '';
