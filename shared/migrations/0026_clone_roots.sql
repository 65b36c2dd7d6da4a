-- The per-source clone rate and clone limit count per ROOT of the claimed hardware ID:
-- every index suffix stripped, lower case (H, H-1, H-01, h-1-1 are one: docs/security.md,
-- "Creation bounded where the attacker pays"), so that claiming other spellings of H buys
-- no fresh allowance (the outside tester's attack2 F1). Deduplication counts, for the claims
-- of a batch that may create a device, what each claim's source created under that root
-- within the windows (shared/db/devices.py SELECT_CREATIONS): this index answers it.
-- The expression must stay exactly shared.domain.identifiers.ROOT_SQL (immutable: lower and
-- regexp_replace with constant arguments). Partial: bulk rows and devices created before
-- 0021 have no source and are never counted. Additive: the previous release ignores it.
CREATE INDEX devices_created_root ON devices
    (account_id, (regexp_replace(lower(claimed_hardware_id), '(-[0-9]+)+$', '')), created_at)
    WHERE created_source <> '';
