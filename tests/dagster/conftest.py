"""Fixtures of the Dagster tests: real instances with temporary storage."""

from __future__ import annotations

from typing import Iterator

import dagster as dg
import pytest


@pytest.fixture(scope="module")
def instance() -> Iterator[dg.DagsterInstance]:
    """One real instance for a test module whose tests each register and run shards of their own."""
    with dg.instance_for_test() as instance:
        yield instance


@pytest.fixture
def fresh_instance() -> Iterator[dg.DagsterInstance]:
    """A real instance of one test's own: sensor ticks and run tags read every partition and run on it."""
    with dg.instance_for_test() as instance:
        yield instance
