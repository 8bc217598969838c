"""Dagster code location for stratum (see definitions.py)."""
