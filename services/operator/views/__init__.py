"""The operator API's JSON shapes by area (the handlers' areas): pure functions of the
records the handlers return. The shapes are the API's contract
(services/operator/openapi.yaml); they are built here, never in the repositories. Times
are ISO 8601 text. ``common`` holds what every area shares: the JSON type, times, the
mask of a read-only key, and the one shape of a newest-first page."""
