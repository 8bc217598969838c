"""`stratum publish` at the edge: a failing LFS upload ends in a clean error, HTTP logs stay quiet, --plan."""

from __future__ import annotations

import logging
import types

import pytest

from stratum_core.cli import main
from stratum_core.publish import hub as hub_module
from tests.core.publish.hubdata import REPO, TOKEN, make_dataset


@pytest.fixture
def no_waits(monkeypatch):
    """Our retry waits and huggingface_hub's own (http_backoff) take no time; ours are recorded."""
    import huggingface_hub.utils._http as hf_http
    import time as real_time

    waits: list[float] = []
    monkeypatch.setattr(hub_module, "_sleep", waits.append)
    fast_time = types.SimpleNamespace(**{n: getattr(real_time, n) for n in dir(real_time) if not n.startswith("_")})
    fast_time.sleep = lambda seconds: None
    monkeypatch.setattr(hf_http, "time", fast_time)
    return waits


def _publish(tmp_path, hub, *extra: str) -> int:
    return main(["publish", str(tmp_path / "ds"), "--hub-repo", REPO, "--endpoint", hub.url, *extra])


def test_an_lfs_upload_that_keeps_failing_is_retried_then_ends_in_a_clean_error(tmp_path, hub, no_waits, caplog,
                                                                                 monkeypatch):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    make_dataset(tmp_path / "ds")
    assert _publish(tmp_path, hub) == 0  # captions first, so the repo has content to keep
    head, files = hub.repo(REPO).head.oid, hub.files(REPO)
    hub.add_fault("PUT", r"/lfs-upload/", "500", times=10_000)
    caplog.clear()
    assert _publish(tmp_path, hub, "--layers", "dinov3") == 2
    assert "error: preupload on me/faces: LFS upload still failing after 6 attempts" in caplog.text
    assert "Traceback" not in caplog.text
    assert len(no_waits) == 5  # our backoff between our 6 tries (each of them huggingface_hub's own retries)
    assert hub.repo(REPO).head.oid == head and hub.files(REPO) == files


def test_an_lfs_upload_failing_a_few_times_is_retried_and_publishes(tmp_path, hub, no_waits, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    make_dataset(tmp_path / "ds")
    hub.add_fault("PUT", r"/lfs-upload/", "500", times=8)  # more than huggingface_hub's own 5 retries
    assert _publish(tmp_path, hub, "--layers", "dinov3") == 0
    assert "dinov3/00000/00000-00005.tar" in hub.files(REPO) and len(no_waits) >= 1


@pytest.mark.parametrize("verbose", [False, True])
def test_http_request_logs_show_only_with_verbose(tmp_path, hub, caplog, monkeypatch, verbose):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    make_dataset(tmp_path / "ds")
    caplog.set_level(logging.INFO)
    assert _publish(tmp_path, hub, *(["--verbose"] if verbose else [])) == 0
    http = [r for r in caplog.records if r.name.startswith("httpx") and "HTTP Request" in r.getMessage()]
    assert bool(http) == verbose
    assert any(r.name == "stratum.publish" for r in caplog.records)


def test_plan_prints_the_layout_and_uploads_nothing(tmp_path, hub, capsys, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    make_dataset(tmp_path / "ds")
    assert _publish(tmp_path, hub, "--plan", "--layers", "caption,dinov3", "--images-per-tar", "2") == 0
    out = capsys.readouterr().out
    assert "chunks to pack: 4" in out and "repo after publish: 9 files" in out  # 1+3 chunks, 2 indexes, 3 others
    assert "commits: 1" in out and "within the Hub's limits" in out
    assert not any(method in ("POST", "PUT") for _, method, _, _ in hub.requests)


def test_plan_over_a_limit_exits_2_and_names_it(tmp_path, hub, capsys, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    make_dataset(tmp_path / "ds")
    assert _publish(tmp_path, hub, "--plan", "--layers", "dinov3", "--images-per-tar", "1", "--folder-limit", "3") == 2
    assert "LIMIT: dinov3 would hold" in capsys.readouterr().out
