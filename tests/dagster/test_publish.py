"""publish_job and reconcile_job against the loopback fake Hub; the hub resource's options and token."""

from __future__ import annotations

import argparse
import json

import dagster as dg

from stratum_core.publish import PublishConfig, publish
from stratum_core.publish.cli import register as register_publish_cli
from stratum_dagster.defs.publish import assets as publish_area
from stratum_dagster.resources import HubResource, StratumResource
from tests.core.publish.hubdata import REPO, TOKEN, config, make_dataset

PUBLISH_OPTIONS = ("layers", "offset", "limit", "license", "attribution_file", "private", "rows_per_parquet",
                   "images_per_tar", "max_tar_mb", "chunks_per_commit", "folder_limit", "commits_per_hour")


def _run(job_name: str, instance: dg.DagsterInstance, hub_resource: HubResource, dataset=None,
         run_config: dict | None = None) -> dg.ExecuteInJobResult:
    stratum = StratumResource(input_root=str(dataset or "."), output_root=str(dataset or "."))
    defs = dg.Definitions(assets=publish_area.defs.assets, jobs=publish_area.defs.jobs,
                          resources={"stratum": stratum, "hub": hub_resource})
    return defs.resolve_job_def(job_name).execute_in_process(instance=instance, run_config=run_config or {},
                                                             raise_on_error=False)


def _manifest(hub) -> dict:
    return json.loads(hub.files(REPO)["manifest.json"])


def test_hub_resource_defaults_are_the_cli_publish_defaults():
    parser = argparse.ArgumentParser()
    register_publish_cli(parser.add_subparsers())
    args = parser.parse_args(["publish", "ds", "--hub-repo", REPO])
    cli_config = PublishConfig(hub_repo=REPO, layers=args.layers, offset=args.offset, limit=args.limit,
                               license=args.license, attribution_file=args.attribution_file, private=args.private,
                               rows_per_parquet=args.rows_per_parquet, images_per_tar=args.images_per_tar,
                               max_tar_mb=args.max_tar_mb, chunks_per_commit=args.chunks_per_commit,
                               folder_limit=args.folder_limit, commits_per_hour=args.commits_per_hour)
    resource_config = HubResource(repo_id=REPO).publish_config()
    assert {o: getattr(resource_config, o) for o in PUBLISH_OPTIONS} == {o: getattr(cli_config, o)
                                                                         for o in PUBLISH_OPTIONS}


def test_publish_job_writes_chunks_sized_by_the_resources_options(tmp_path, hub, instance):
    make_dataset(tmp_path / "ds")
    credit = tmp_path / "credit.txt"
    credit.write_text("Photos by the Example Archive.")
    resource = HubResource(repo_id=REPO, token=TOKEN, endpoint=hub.url, layers=["caption", "dinov3"],
                           rows_per_parquet=4, images_per_tar=3, chunks_per_commit=2, attribution_file=str(credit))
    result = _run("publish_job", instance, resource, tmp_path / "ds")
    assert result.success
    files = hub.files(REPO)
    assert {"data/00000/00000-00003.parquet", "data/00000/00004-00005.parquet",
            "dinov3/00000/00000-00002.tar", "dinov3/00000/00003-00005.tar"} <= set(files)
    assert "Photos by the Example Archive." in files["ATTRIBUTION.md"].decode()
    assert "Photos by the Example Archive." in files["README.md"].decode()
    assert _manifest(hub)["total_images"] == 6
    assert len(hub.repo(REPO).commits) > 2  # 4 chunk files, 2 per commit, after the repo's initial commit
    [event] = result.get_asset_materialization_events()
    assert event.materialization.metadata["total_images"].value == 6


def _publish_two_chunks_then_delete_one(tmp_path, hub) -> None:
    make_dataset(tmp_path / "ds")
    publish(tmp_path / "ds", config(layers=("caption", "dinov3"), images_per_tar=3), token=TOKEN, endpoint=hub.url)
    hub.put_files(REPO, {}, delete=("dinov3/00000/00003-00005.tar",))


def test_reconcile_job_rebuilds_the_manifest_from_the_repos_files(tmp_path, hub, instance):
    _publish_two_chunks_then_delete_one(tmp_path, hub)
    result = _run("reconcile_job", instance, HubResource(repo_id=REPO, token=TOKEN, endpoint=hub.url))
    assert result.success
    manifest = _manifest(hub)
    assert manifest["layers"]["dinov3"]["chunks"] == {"00000-00002": 3}
    assert "dinov3/00000/00003-00005.index.json" not in hub.files(REPO)
    assert "| dinov3 | webdataset | 3 |" in hub.files(REPO)["README.md"].decode()


def test_reconcile_job_dry_run_reports_the_manifest_and_commits_nothing(tmp_path, hub, instance):
    _publish_two_chunks_then_delete_one(tmp_path, hub)
    head, before = hub.repo(REPO).head.oid, hub.files(REPO)
    result = _run("reconcile_job", instance, HubResource(repo_id=REPO, token=TOKEN, endpoint=hub.url),
                  run_config={"ops": {"reconcile_hub": {"config": {"dry_run": True}}}})
    assert result.success
    assert hub.repo(REPO).head.oid == head and hub.files(REPO) == before
    [output] = [e for e in result.all_events if e.event_type_value == "STEP_OUTPUT"]
    metadata = {k: v.value for k, v in output.step_output_data.metadata.items()}
    assert metadata["changed"] is True and metadata["commit"] == "-"
    assert metadata["manifest"]["layers"]["dinov3"]["chunks"] == {"00000-00002": 3}


def _publish_through_the_code_location(tmp_path, hub, instance, monkeypatch) -> dg.ExecuteInJobResult:
    """publish_job exactly as the code location binds it: settings from the environment, read when the job
    runs; huggingface_hub's default endpoint is pointed at the fake Hub."""
    import huggingface_hub.constants as constants

    from stratum_dagster.definitions import defs

    make_dataset(tmp_path / "ds")
    monkeypatch.setenv("STRATUM_INPUT_DIR", str(tmp_path / "ds"))
    monkeypatch.setenv("STRATUM_OUTPUT_DIR", str(tmp_path / "ds"))
    monkeypatch.setenv("STRATUM_HUB_REPO", REPO)
    # What HF_ENDPOINT sets when huggingface_hub is imported; the job runs with the resource's endpoint unset.
    monkeypatch.setattr(constants, "ENDPOINT", hub.url)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", hub.url + "/{repo_id}/resolve/{revision}/{filename}")
    return defs().resolve_job_def("publish_job").execute_in_process(instance=instance, raise_on_error=False)


def test_publish_job_runs_without_hf_token(tmp_path, hub, instance, monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    assert _publish_through_the_code_location(tmp_path, hub, instance, monkeypatch).success
    assert "data/00000/00000-00005.parquet" in hub.files(REPO)
    assert hub.auth_headers == set()  # no token, and no saved login in the tests' HF_HOME


def test_publish_job_reads_hf_token_when_the_job_runs(tmp_path, hub, instance, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", TOKEN)  # set after the code location was imported
    assert _publish_through_the_code_location(tmp_path, hub, instance, monkeypatch).success
    assert hub.auth_headers == {f"Bearer {TOKEN}"}


def test_hub_dataset_adds_only_the_shards_finished_since_the_last_publish(tmp_path, hub, instance):
    from tests.core.publish.test_growing import add_group, assert_earlier_chunks_unchanged

    src, out = tmp_path / "in", tmp_path / "out"
    add_group(src, out, "ffhq", ["img0", "img1", "img2", "img3"])
    resource = HubResource(repo_id=REPO, token=TOKEN, endpoint=hub.url, layers=["caption", "dinov3"],
                           rows_per_parquet=2, images_per_tar=2)
    assert _run("publish_job", instance, resource, out).success
    before = hub.files(REPO)
    add_group(src, out, "aaa", ["x0", "x1"])  # a new folder that sorts first
    result = _run("publish_job", instance, resource, out)
    assert result.success
    [event] = result.get_asset_materialization_events()
    metadata = {k: v.value for k, v in event.materialization.metadata.items()}
    assert metadata["shards_added"] == {"aaa-0000": "00004-00005"}
    assert metadata["ranges_added"] == ["00004-00005"] and metadata["total_images"] == 6
    assert_earlier_chunks_unchanged(before, hub.files(REPO))
