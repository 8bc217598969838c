"""Transient Hub errors are retried, others fail at once, and an interrupted commit changes nothing."""

from __future__ import annotations

import io
import json
import logging
import sys

import pyarrow.parquet as pq
import pytest

from stratum_core.publish import PublishConfig, RetryPolicy, publish
from stratum_core.publish.hub import PublishError
from tests.core.publish.hubdata import REPO, TOKEN, config, make_dataset


def test_429_with_retry_after_twice_then_success_waits_and_publishes(tmp_path, hub):
    make_dataset(tmp_path / "ds")
    hub.create_repo(REPO)
    hub.add_fault("POST", r"/commit/", "429", times=2, retry_after=1)
    result = publish(tmp_path / "ds", config(layers=("caption",)), token=TOKEN, endpoint=hub.url)
    assert result.changed and "manifest.json" in hub.files(REPO)
    times = [t for t, m, p, s in hub.requests if m == "POST" and "/commit/" in p]
    assert [s for _, m, p, s in hub.requests if m == "POST" and "/commit/" in p] == [429, 429, 200]
    assert times[1] - times[0] >= 0.95 and times[2] - times[1] >= 0.95  # honoured Retry-After: 1


def test_5xx_is_retried_with_backoff(tmp_path, hub):
    make_dataset(tmp_path / "ds")
    hub.create_repo(REPO)
    hub.add_fault("POST", r"/commit/", "503", times=2)
    result = publish(tmp_path / "ds", config(layers=("caption",)), token=TOKEN, endpoint=hub.url)
    assert result.changed and hub.count("POST", r"/commit/", 503) == 2


def test_other_4xx_fails_at_once_with_the_server_message(tmp_path, hub):
    make_dataset(tmp_path / "ds")
    hub.create_repo(REPO)
    hub.add_fault("POST", r"/commit/", "403", times=5)
    with pytest.raises(PublishError, match="HTTP 403: injected 403"):
        publish(tmp_path / "ds", config(layers=("caption",)), token=TOKEN, endpoint=hub.url)
    assert hub.count("POST", r"/commit/") == 1


def test_409_on_a_commit_fails_at_once_and_is_not_taken_for_a_moved_parent(tmp_path, hub):
    make_dataset(tmp_path / "ds")
    hub.create_repo(REPO)
    hub.add_fault("POST", r"/commit/", "409", times=10)
    with pytest.raises(PublishError, match="HTTP 409: injected 409"):
        publish(tmp_path / "ds", config(layers=("caption",)), token=TOKEN, endpoint=hub.url)
    assert hub.count("POST", r"/commit/") == 1


def test_dropped_connection_mid_commit_leaves_repo_unchanged_and_rerun_completes(tmp_path, hub):
    make_dataset(tmp_path / "ds")
    publish(tmp_path / "ds", config(layers=("caption",), limit=3), token=TOKEN, endpoint=hub.url)
    before_head, before_files = hub.repo(REPO).head.oid, hub.files(REPO)
    hub.add_fault("POST", r"/commit/", "drop", times=2)
    one_try = config(layers=("caption", "dinov3"), retry=RetryPolicy(attempts=2, backoff_s=0.01))
    with pytest.raises(PublishError, match="connection failed"):
        publish(tmp_path / "ds", one_try, token=TOKEN, endpoint=hub.url)
    assert hub.repo(REPO).head.oid == before_head and hub.files(REPO) == before_files
    publish(tmp_path / "ds", one_try, token=TOKEN, endpoint=hub.url)
    manifest = json.loads(hub.files(REPO)["manifest.json"])
    assert manifest["total_images"] == 6 and manifest["layers"]["dinov3"]["count"] == 6


def rival_before_our_first_commit(monkeypatch, rival) -> None:
    """Run `rival()` once, between our plan and our first commit (so that commit's parent has moved)."""
    from stratum_core.publish import hub as hub_module

    real_commit = hub_module.HubClient.commit
    raced = []

    def commit_after_a_rival(self, operations, message, parent):
        if not raced:
            raced.append(message)  # first, so a rival that publishes through this same patch commits plainly
            rival()
        return real_commit(self, operations, message, parent)

    monkeypatch.setattr(hub_module.HubClient, "commit", commit_after_a_rival)


def test_losing_a_race_rereads_and_keeps_the_other_publishers_files(tmp_path, hub, monkeypatch):
    make_dataset(tmp_path / "ds")
    hub.create_repo(REPO)
    rival_before_our_first_commit(monkeypatch, lambda: hub.put_files(REPO, {"notes/rival.txt": b"rival"}))
    publish(tmp_path / "ds", config(layers=("caption",)), token=TOKEN, endpoint=hub.url)
    files = hub.files(REPO)
    assert files["notes/rival.txt"] == b"rival" and "data/00000/00000-00005.parquet" in files
    assert hub.count("POST", r"/commit/", 412) == 1


def test_a_rival_adding_a_layer_to_the_same_range_keeps_both_layers(tmp_path, hub, monkeypatch):
    make_dataset(tmp_path / "ds")
    hub.create_repo(REPO)
    # A rival publishes caption for the same range while we publish dinov3.
    rival_before_our_first_commit(
        monkeypatch, lambda: publish(tmp_path / "ds", config(layers=("caption",)), token=TOKEN, endpoint=hub.url))
    publish(tmp_path / "ds", config(layers=("dinov3",)), token=TOKEN, endpoint=hub.url)
    files = hub.files(REPO)
    table = pq.read_table(io.BytesIO(files["data/00000/00000-00005.parquet"]))
    assert None not in table.column("caption").to_pylist() and None not in table.column("dinov3_cls").to_pylist()
    manifest = json.loads(files["manifest.json"])
    assert manifest["layers"]["caption"]["count"] == 6 and manifest["layers"]["dinov3"]["count"] == 6
    assert hub.count("POST", r"/commit/", 412) == 1


def test_a_rival_commit_between_our_batches_keeps_its_layer_in_our_later_chunks(tmp_path, hub, monkeypatch):
    from stratum_core.publish import hub as hub_module

    make_dataset(tmp_path / "ds")
    hub.create_repo(REPO)
    real_commit = hub_module.HubClient.commit
    rival = config(layers=("caption",), rows_per_parquet=3)

    def rival_after_our_first_commit(self, operations, message, parent):
        oid = real_commit(self, operations, message, parent)
        if "dinov3" in message and len(hub.repo(REPO).commits) == 2:
            publish(tmp_path / "ds", rival, token=TOKEN, endpoint=hub.url)
        return oid

    monkeypatch.setattr(hub_module.HubClient, "commit", rival_after_our_first_commit)
    publish(tmp_path / "ds", config(layers=("dinov3",), rows_per_parquet=3, images_per_tar=3, chunks_per_commit=2),
            token=TOKEN, endpoint=hub.url)
    files = hub.files(REPO)
    for label in ("00000-00002", "00003-00005"):
        table = pq.read_table(io.BytesIO(files[f"data/00000/{label}.parquet"]))
        assert None not in table.column("caption").to_pylist() + table.column("dinov3_cls").to_pylist()
    manifest = json.loads(files["manifest.json"])
    assert manifest["layers"]["caption"]["count"] == 6 and manifest["layers"]["dinov3"]["count"] == 6


@pytest.mark.parametrize("lost_reply", ["500", "drop"])
def test_a_commit_applied_but_its_reply_lost_is_not_made_again(tmp_path, hub, lost_reply):
    make_dataset(tmp_path / "ds")
    hub.create_repo(REPO)
    commits_before = len(hub.repo(REPO).commits)
    hub.add_fault("POST", r"/commit/", lost_reply, applied=True)
    publish(tmp_path / "ds", config(layers=("caption", "dinov3")), token=TOKEN, endpoint=hub.url)
    assert hub.count("POST", r"/commit/", 412) == 1  # the retry found its own commit on main
    assert len(hub.repo(REPO).commits) == commits_before + 1
    assert json.loads(hub.files(REPO)["manifest.json"])["layers"]["dinov3"]["count"] == 6


def test_token_never_appears_in_output_or_logs(tmp_path, hub, capsys, caplog):
    from stratum_core.cli import main

    make_dataset(tmp_path / "ds")
    hub.add_fault("POST", r"/commit/", "429", times=1, retry_after=0)
    caplog.set_level(logging.DEBUG)
    monkey_env = {"HF_TOKEN": TOKEN}
    import os

    old = os.environ.get("HF_TOKEN")
    os.environ.update(monkey_env)
    try:
        assert main(["publish", str(tmp_path / "ds"), "--hub-repo", REPO, "--layers", "caption,dinov3",
                     "--endpoint", hub.url]) == 0
        hub.add_fault("POST", r"/commit/", "401", times=1)
        (tmp_path / "ds" / "a" / "img0" / "caption.txt").write_text("changed")
        assert main(["publish", str(tmp_path / "ds"), "--hub-repo", REPO, "--endpoint", hub.url]) == 2
        assert main(["reconcile", "--hub-repo", REPO, "--dry-run", "--endpoint", hub.url]) == 0
    finally:
        os.environ.pop("HF_TOKEN") if old is None else os.environ.update({"HF_TOKEN": old})
    out = capsys.readouterr()
    assert any(TOKEN in h for h in hub.auth_headers)  # the token was used ...
    assert TOKEN not in out.out + out.err and TOKEN not in caplog.text  # ... and never shown
    assert "HTTP 401" in caplog.text


def test_config_refuses_bad_retry_policy():
    with pytest.raises(Exception):
        PublishConfig(hub_repo=REPO, retry=RetryPolicy(attempts=0))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="memfd payloads are Linux-only")
def test_a_failed_upload_frees_every_packed_chunk_and_changes_nothing(tmp_path, hub):
    from tests.core.publish.test_pack import open_payloads

    make_dataset(tmp_path / "ds")
    hub.create_repo(REPO)
    before = hub.files(REPO)
    hub.add_fault("POST", r"/preupload/", "403", times=1)
    with pytest.raises(PublishError, match="HTTP 403"):
        publish(tmp_path / "ds", config(layers=("caption", "dinov3")), token=TOKEN, endpoint=hub.url)
    assert open_payloads() == [] and hub.files(REPO) == before
