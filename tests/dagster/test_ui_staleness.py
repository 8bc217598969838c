"""Staleness as the UI shows it: `dagster dev`'s GraphQL after new weights are reloaded into the code location."""

from __future__ import annotations

import os
import shutil

import dagster as dg
import pytest

from stratum_core.cli import main as cli_main
from stratum_dagster.partitions import add_registered_shards, observe_first
from tests.dagster import webserver
from tests.dagster.helpers import write_tree

pytest.importorskip("torch")

STALE_QUERY = """query($p: String!) { assetNodes(assetKeys: [{path: ["metadata"]}, {path: ["seg"]}]) {
                   assetKey { path } staleStatus(partition: $p) staleCauses(partition: $p) { category reason } } }"""


@pytest.fixture
def site(tmp_path) -> dict:
    """One shard (people-0000) registered and added as a partition with its sources observed, the instance of
    dagster.yaml.example, and a model dir the code location reads ($STRATUM_MODEL_DIR) with a second seg
    checkpoint beside it."""
    from stratum_testing.sapiens_models import build_model_dirs_with_two_seg_checkpoints, model_path

    src, out, home = tmp_path / "in", tmp_path / "out", tmp_path / "dagster_home"
    home.mkdir()
    shutil.copyfile(webserver.REPO_ROOT / "dagster.yaml.example", home / "dagster.yaml")
    models, other = build_model_dirs_with_two_seg_checkpoints(tmp_path / "models", tmp_path / "models-new")
    write_tree(src, ["people/a.png", "people/b.png"])
    assert cli_main(["shards", "register", str(src), "-o", str(out)]) == 0
    with dg.DagsterInstance.from_config(str(home)) as instance:
        [key] = add_registered_shards(instance, out)
        observe_first(instance, src, out, [key])
    env = {**os.environ, "DAGSTER_HOME": str(home), "STRATUM_INPUT_DIR": str(src), "STRATUM_OUTPUT_DIR": str(out),
           "STRATUM_HUB_REPO": "someone/dataset", "STRATUM_MODEL_DIR": str(models), "HF_HUB_OFFLINE": "1",
           "PYTHONUNBUFFERED": "1"}
    return {"key": key, "env": env, "root": tmp_path, "seg_weights": model_path(models, "seg"),
            "new_seg_weights": model_path(other, "seg")}


def stale_status(url: str, key: str) -> dict[str, tuple[str, list[str]]]:
    """asset → (stale status, stale cause categories) of partition `key`, as the asset page reads them."""
    nodes = webserver.graphql(url, STALE_QUERY, {"p": key})["assetNodes"]
    return {"/".join(n["assetKey"]["path"]): (n["staleStatus"], [c["category"] for c in n["staleCauses"]])
            for n in nodes}


def test_new_seg_weights_reloaded_into_the_code_location_make_the_seg_partition_stale_in_the_ui(site):
    with webserver.dagster_dev(site["env"], site["root"] / "dagster_dev.log") as url:
        runs = [webserver.launch(url, job, site["key"]) for job in ("metadata_job", "seg_job")]
        assert webserver.wait_for_runs(url, runs) == ["SUCCESS", "SUCCESS"]
        assert stale_status(url, site["key"]) == {"metadata": ("FRESH", []), "seg": ("FRESH", [])}

        shutil.copyfile(site["new_seg_weights"], site["seg_weights"])  # new weights under the same name
        webserver.reload_location(url)

        assert stale_status(url, site["key"]) == {"metadata": ("FRESH", []), "seg": ("STALE", ["CODE"])}
