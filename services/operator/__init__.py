"""The operator API: accounts' products, codes, registrations and devices (authenticated)."""
