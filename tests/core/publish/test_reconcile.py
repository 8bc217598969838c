"""Reconcile rebuilds manifest and card from the repo's files; --dry-run changes nothing."""

from __future__ import annotations

import json

from stratum_core.publish import reconcile, publish
from stratum_core.publish.manifest import same_content
from tests.core.publish.hubdata import REPO, TOKEN, config, make_dataset


def _publish_two_chunks(tmp_path, hub):
    make_dataset(tmp_path / "ds")
    publish(tmp_path / "ds", config(layers=("caption", "dinov3"), rows_per_parquet=3, images_per_tar=3),
            token=TOKEN, endpoint=hub.url)


def test_reconcile_after_hand_deleting_a_chunk_corrects_counts(tmp_path, hub):
    _publish_two_chunks(tmp_path, hub)
    hub.put_files(REPO, {}, delete=("dinov3/00000/00003-00005.tar",))
    result = reconcile(config(), token=TOKEN, endpoint=hub.url)
    assert result.committed is not None
    manifest = json.loads(hub.files(REPO)["manifest.json"])
    assert manifest["layers"]["dinov3"]["chunks"] == {"00000-00002": 3} and manifest["layers"]["dinov3"]["count"] == 3
    assert manifest["layers"]["caption"]["count"] == 6
    index = json.loads(hub.files(REPO)["dinov3/00000/00000-00005.index.json"])  # the folder's batch index
    assert list(index["chunks"]) == ["00000-00002"]  # the deleted chunk's entry is gone
    assert "| dinov3 | webdataset | 3 |" in hub.files(REPO)["README.md"].decode()


def test_reconcile_counts_from_the_label_when_no_index(tmp_path, hub):
    _publish_two_chunks(tmp_path, hub)
    hub.put_files(REPO, {}, delete=("dinov3/00000/00000-00005.index.json",))
    result = reconcile(config(), dry_run=True, token=TOKEN, endpoint=hub.url)
    assert result.manifest["layers"]["dinov3"]["chunks"] == {"00000-00002": 3, "00003-00005": 3}
    assert result.manifest["estimated_counts"] == ["dinov3/00000/00000-00002.tar", "dinov3/00000/00003-00005.tar"]


def _writes(hub) -> int:
    return sum(1 for _, method, _, _ in hub.requests if method in ("POST", "PUT"))


def test_dry_run_uploads_nothing(tmp_path, hub):
    _publish_two_chunks(tmp_path, hub)
    hub.put_files(REPO, {}, delete=("data/00000/00003-00005.parquet",))
    head, writes_before = hub.repo(REPO).head.oid, _writes(hub)
    result = reconcile(config(), dry_run=True, token=TOKEN, endpoint=hub.url)
    assert result.changed and result.committed is None and result.manifest["total_images"] == 3
    assert hub.repo(REPO).head.oid == head and _writes(hub) == writes_before


def test_reconcile_of_a_consistent_repo_changes_nothing(tmp_path, hub):
    _publish_two_chunks(tmp_path, hub)
    head = hub.repo(REPO).head.oid
    result = reconcile(config(), token=TOKEN, endpoint=hub.url)
    assert not result.changed and hub.repo(REPO).head.oid == head
    assert same_content(result.manifest, json.loads(hub.files(REPO)["manifest.json"]))


def test_reconcile_license_and_attribution_update_the_card(tmp_path, hub):
    _publish_two_chunks(tmp_path, hub)
    credit = tmp_path / "credit.txt"
    credit.write_text("Photos by the FFHQ authors.")
    reconcile(config(license="cc-by-4.0", attribution_file=str(credit)), token=TOKEN, endpoint=hub.url)
    files = hub.files(REPO)
    card = files["README.md"].decode()
    assert "license: cc-by-4.0" in card and "Photos by the FFHQ authors." in card
    assert files["ATTRIBUTION.md"] == b"Photos by the FFHQ authors."


def test_reconcile_again_with_the_same_attribution_makes_no_commit(tmp_path, hub):
    _publish_two_chunks(tmp_path, hub)
    credit = tmp_path / "credit.txt"
    credit.write_text("Photos by the FFHQ authors.")
    with_credit = config(attribution_file=str(credit))
    assert reconcile(with_credit, token=TOKEN, endpoint=hub.url).committed is not None
    head = hub.repo(REPO).head.oid
    result = reconcile(with_credit, token=TOKEN, endpoint=hub.url)
    assert not result.changed and result.committed is None and hub.repo(REPO).head.oid == head


def test_the_package_reconcile_stays_a_function_after_a_reconcile():
    # Importing a submodule named like the function would rebind the package attribute to the module.
    import stratum_core.publish as publish_package
    from stratum_core.publish import reconciler  # noqa: F401  (the implementation module, now loaded)

    assert callable(publish_package.reconcile) and publish_package.reconcile is reconcile
