"""Tests for stratum."""
