"""CSV ingestion: bulk registration uploads (operator-facing) and their publishing."""
