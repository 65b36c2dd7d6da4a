-- Wrong bulk registration keys are counted per hardware ID whatever its case (one ID,
-- migration 0008): deduplication's count compares lower(claimed_hardware_id), which the
-- index of 0002 on the column as written cannot serve.
CREATE INDEX registration_decisions_refused_any_case
    ON registration_decisions (product_id, lower(claimed_hardware_id), decided_at) WHERE decision = 'refused';
DROP INDEX registration_decisions_refused;
