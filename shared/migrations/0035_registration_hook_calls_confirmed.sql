-- The notifier's sweep looks for confirmed hook calls of the last reservation hold whose
-- request is still only decided (the ruling committed, its registration.decided lost with
-- the instance or the broker before it was published): found by when they were answered.
CREATE INDEX registration_hook_calls_confirmed ON registration_hook_calls (answered_at)
    WHERE outcome IN ('allow', 'failed_open', 'no_hook');
