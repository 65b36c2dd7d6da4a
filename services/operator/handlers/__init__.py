"""The operator API's business logic by area: plain typed functions of the account and
validated input, free of HTTP. They validate what the routes parsed, call the repositories
and return records (the repositories' or their own); the views turn them into JSON.

One module per area, each below the routes, the console and the views, none importing
another's internals (Import Linter, pyproject.toml): ``products`` (products and auto
registrations), ``devices``, ``webhooks``, ``trail`` (registration decisions, security
alerts, the operator audit trail, retention), ``access`` (API keys), ``live`` (the live
storm view and the pipeline's health, pure), and below them all ``query`` (query
parameters and the newest-first ``Page``).
"""
