"""The router's Postgres adapters (schema ``router``)."""
