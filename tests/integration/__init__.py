"""Tests against a real PostgreSQL, in process."""
