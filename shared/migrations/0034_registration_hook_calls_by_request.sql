-- The audit trail of registration decisions shows, beside a decision, its registration
-- hook's call (outcome and latency): found by the request the call last answered.
CREATE INDEX registration_hook_calls_request ON registration_hook_calls (request_id);
