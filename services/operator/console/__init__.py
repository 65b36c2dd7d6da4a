"""The operator console: server-rendered pages at /console/ on the operator service
(docs/console.md)."""
