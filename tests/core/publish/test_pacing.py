"""Commit pacing: at most `commits_per_hour` commits in any hour, waiting instead of failing, across re-runs."""

from __future__ import annotations

import time

import pytest

from stratum_core.publish import publish
from stratum_core.publish import hub as hub_module
from tests.core.publish.hubdata import REPO, TOKEN, config, make_dataset

PACED = dict(layers=("caption",), rows_per_parquet=2, chunks_per_commit=1, commits_per_hour=2)


class FakeClock:
    """Wall-clock seconds that only move when someone sleeps; `interrupt_at` raises on that sleep (1-based)."""

    def __init__(self, interrupt_at: int | None = None):
        self.now, self.sleeps, self.interrupt_at = time.time(), [], interrupt_at

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        if len(self.sleeps) == self.interrupt_at:
            raise KeyboardInterrupt
        self.now += seconds


@pytest.fixture
def clock(monkeypatch, hub):
    fake = FakeClock()
    monkeypatch.setattr(hub_module, "_clock", fake)
    monkeypatch.setattr(hub_module, "_sleep", fake.sleep)
    hub.clock = fake  # the Hub dates its commits by the same clock
    return fake


def _chunk_commits(hub) -> list:
    return [c for c in hub.repo(REPO).commits if c.message.startswith("stratum publish")]


def test_commits_beyond_the_hourly_pace_wait_instead_of_failing(tmp_path, hub, clock):
    make_dataset(tmp_path / "ds")
    result = publish(tmp_path / "ds", config(**PACED), token=TOKEN, endpoint=hub.url)
    assert len(result.commits) == 3
    dates = [c.created for c in hub.repo(REPO).commits]  # the repo's first commit counts too
    assert all(later - earlier > 3600 - 0.01 for earlier, later in zip(dates, dates[2:]))  # dates: µs
    assert clock.sleeps and all(s > 3000 for s in clock.sleeps)


def test_an_interrupted_paced_publish_resumes_without_repeating_a_commit(tmp_path, hub, clock):
    make_dataset(tmp_path / "ds")
    clock.interrupt_at = 1  # stopped (Ctrl-C) while waiting for the pace
    with pytest.raises(KeyboardInterrupt):
        publish(tmp_path / "ds", config(**PACED), token=TOKEN, endpoint=hub.url)
    assert len(_chunk_commits(hub)) == 1
    clock.interrupt_at = None
    waits_before = len(clock.sleeps)
    result = publish(tmp_path / "ds", config(**PACED), token=TOKEN, endpoint=hub.url)
    assert len(result.commits) == 2 and result.skipped_chunks == ["data/00000/00000-00001.parquet"]
    labels = [c.message.rsplit(" ", 1)[1] for c in _chunk_commits(hub)]
    assert labels == ["00000-00001..00000-00001", "00002-00003..00002-00003", "00004-00005..00004-00005"]
    assert len(clock.sleeps) > waits_before  # the re-run counted the repo's recent commits and waited
    dates = [c.created for c in hub.repo(REPO).commits]
    assert all(later - earlier > 3600 - 0.01 for earlier, later in zip(dates, dates[2:]))  # dates: µs
