"""publish_job and mixed model revisions: refused by default, published and reported with the hub resource's
`allow_mixed_revisions`."""

from __future__ import annotations

import json

from stratum_core.publish import PublishConfig
from stratum_dagster.resources import HubResource
from tests.core.publish.hubdata import IDS, REPO, TOKEN, make_dataset, record_dinov3
from tests.dagster.test_publish import _run

OLD, NEW = "rev:1111111111aaaa", "rev:2222222222bbbb"


def _mixed_dataset(root) -> None:
    make_dataset(root)
    record_dinov3(root, IDS[:4], OLD)
    record_dinov3(root, IDS[4:], NEW)


def test_hub_resource_allow_mixed_revisions_is_off_like_the_cli():
    assert HubResource(repo_id=REPO).publish_config().allow_mixed_revisions is False
    assert PublishConfig(hub_repo=REPO).allow_mixed_revisions is False


def test_publish_job_refuses_a_layer_of_mixed_revisions(tmp_path, hub, instance):
    _mixed_dataset(tmp_path / "ds")
    resource = HubResource(repo_id=REPO, token=TOKEN, endpoint=hub.url, layers=["dinov3"])
    result = _run("publish_job", instance, resource, tmp_path / "ds")
    assert not result.success
    failures = [e.step_failure_data.error.to_string() for e in result.all_events if e.is_step_failure]
    assert any("layer dinov3 mixes 2 model revisions" in m for m in failures)
    assert ("datasets", REPO) not in hub.repos


def test_publish_job_with_allow_mixed_revisions_publishes_and_lists_the_mix(tmp_path, hub, instance):
    _mixed_dataset(tmp_path / "ds")
    resource = HubResource(repo_id=REPO, token=TOKEN, endpoint=hub.url, layers=["dinov3"],
                           allow_mixed_revisions=True)
    assert _run("publish_job", instance, resource, tmp_path / "ds").success
    variants = json.loads(hub.files(REPO)["manifest.json"])["layers"]["dinov3"]["provenance"]["variants"]
    assert [(v["weights"], v["images"]) for v in variants] == [(OLD, 4), (NEW, 2)]
