-- Undo, edit, cancel and delete (issue 13): a product's services can be enabled, disabled
-- and given another port after locking; an unused product and a device can be deleted.

-- A service's edits. ``revision`` counts the changes that alter what its provisioning
-- files hold (the port; the name while the product is new): a device's file of an older
-- revision is rendered again, lazily, the next time that device asks for its files.
-- ``changed_at`` is the last change of any kind (enabled, port): the reference protocol's
-- configuration call answers it as its ``timestamp`` (the product's lock time until the
-- first change), so reference clients notice the change. Both are constants for the rows
-- that exist: adding them rewrites nothing.
ALTER TABLE product_services
    ADD COLUMN revision   integer NOT NULL DEFAULT 1,
    ADD COLUMN changed_at timestamptz;

-- The revision of its service a file was rendered from (see above).
ALTER TABLE provisioning_files ADD COLUMN service_revision integer NOT NULL DEFAULT 1;

-- A deleted product leaves the registration decisions that named it (refused claims with
-- its code, a cancelled upload's) as they are, without the product: the audit trail of
-- decisions outlives what it refers to, as it already does for a deleted device.
ALTER TABLE registration_decisions
    DROP CONSTRAINT registration_decisions_product_id_fkey,
    ADD CONSTRAINT registration_decisions_product_id_fkey
        FOREIGN KEY (product_id) REFERENCES products (id) ON DELETE SET NULL;
