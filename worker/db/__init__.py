"""Database access: engines, schema, and the repository (the only module that runs SQL)."""
