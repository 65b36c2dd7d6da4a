-- Webhooks that keep failing are disabled (issue 21), as Standard Webhooks / Svix and
-- Stripe do: an endpoint answering 410 Gone at once, one whose every attempt failed for
-- FLEETREG_WEBHOOK_DISABLE_AFTER_SECONDS (5 days) at its next failed attempt after that.
-- ``failing_since`` is the first failed attempt since the last delivered one (NULL while
-- deliveries succeed). A disabled webhook gets no new deliveries (its pending ones are
-- failed when it is disabled); the operator sees ``disabled_at`` and ``disabled_reason``
-- and enables it again (POST /v1/webhooks/{id}/enable). docs/operations.md, "Webhooks".
ALTER TABLE webhooks
    ADD COLUMN failing_since   timestamptz,
    ADD COLUMN disabled_at     timestamptz,
    ADD COLUMN disabled_reason text NOT NULL DEFAULT '';
