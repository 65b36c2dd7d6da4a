-- Device search (docs/operations.md, "Searching and exporting devices"): one index per
-- sort key of the operator's listing, each (account, sort expression, ID) so that a page in
-- any sort order, and its keyset cursor (sort value, ID), is an index range scan within one
-- account, never a sort of the account's devices. The expressions are exactly those of
-- shared/db/devices.py _SORT_EXPRESSIONS: the planner uses an expression index only for
-- the same expression.
--
-- Hardware IDs and names are compared lower-case in byte order (COLLATE "C"), whatever the
-- database's locale: a prefix filter is then the range prefix <= value < next(prefix) on
-- the same index (a LIKE pattern could use a default-collation index only in the C locale).
CREATE INDEX devices_search_id ON devices (account_id, id);
CREATE INDEX devices_search_hardware_id ON devices (account_id, (lower(hardware_id) COLLATE "C"), id);
CREATE INDEX devices_search_name ON devices (account_id, (lower(name) COLLATE "C"), id);
CREATE INDEX devices_search_created ON devices (account_id, created_at, id);
-- Devices never registered (preregistered by a bulk CSV) or never seen sort first
-- ascending: the same coalesce as the listing's sort expression.
CREATE INDEX devices_search_registered ON devices (account_id, (coalesce(registered_at, '-infinity'::timestamptz)), id);
CREATE INDEX devices_search_seen ON devices (account_id, (coalesce(last_seen_at, '-infinity'::timestamptz)), id);
-- Exact filters an operator combines with any sort: the category columns of the bulk CSV and
-- the product. (A registration's devices already have devices_registration, 0001.)
CREATE INDEX devices_search_category_a ON devices (account_id, category_a, id);
CREATE INDEX devices_search_category_b ON devices (account_id, category_b, id);
CREATE INDEX devices_search_product ON devices (account_id, product_id, id);
