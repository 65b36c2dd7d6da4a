"""The console's pages, one module per part of the operator's work; each lists ``ROUTES``."""
