-- The per-source clone rate and clone limit count a claim that spells an existing device's
-- hardware ID with more index suffixes (H exists: H-1, H-01, h-1-1) with that device, its
-- family head (docs/security.md, "Creation bounded where the attacker pays"), so that other
-- spellings of H buy no fresh allowance (the outside tester's attack2 F1). For such claims
-- only, deduplication reads what the claim's source created under the head's ROOT (every
-- index suffix stripped, lower case) within the windows, narrowed to the head's prefix
-- (shared/db/devices.py SELECT_CREATIONS): this index answers it.
-- The expression must stay exactly shared.domain.identifiers.ROOT_SQL (immutable: lower and
-- regexp_replace with constant arguments). Partial: bulk rows and devices created before
-- 0021 have no source and are never counted. Additive: the previous release ignores it.
CREATE INDEX devices_created_root ON devices
    (account_id, (regexp_replace(lower(claimed_hardware_id), '(-[0-9]+)+$', '')), created_at)
    WHERE created_source <> '';
