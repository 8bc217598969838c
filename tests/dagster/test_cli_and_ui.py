"""From the shell: `dagster job execute` on a shard, and `dagster dev` serving GraphQL and the UI."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from html.parser import HTMLParser
from pathlib import Path

import dagster as dg
import numpy as np
import pytest

from stratum_core.artifacts import pass_files
from stratum_core.cli import main as cli_main
from stratum_core.passes import DEFAULT_PASSES, REGISTRY
from stratum_core.store import FAILURE_PREFIX
from tests.dagster import webserver
from tests.dagster.helpers import register, write_tree
from stratum_testing.model_dir import build_smoke_model_dir

CATALOG_PAGE = "/assets"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> dict:
    """A source tree with one shard registered on disk and as a partition (`key`), one registered by
    `stratum shards register` only (`cli_key`), the instance of dagster.yaml.example, and the
    environment the code location reads."""
    root = tmp_path_factory.mktemp("site")
    src, out, home = root / "in", root / "out", root / "dagster_home"
    home.mkdir()
    shutil.copyfile(Path(__file__).parents[2] / "dagster.yaml.example", home / "dagster.yaml")
    write_tree(src, ["people/a.png", "people/b.png", "later/c.png", "later/d.png"])
    with dg.DagsterInstance.from_config(str(home)) as instance:
        [key] = register(src, out, instance, "people")
    assert cli_main(["shards", "register", str(src), "-o", str(out)]) == 0  # adds later-0000, on disk only
    env = {**os.environ, "DAGSTER_HOME": str(home), "STRATUM_INPUT_DIR": str(src), "STRATUM_OUTPUT_DIR": str(out),
           "STRATUM_HUB_REPO": "someone/dataset", "PYTHONUNBUFFERED": "1"}
    return {"src": src, "out": out, "home": home, "key": key, "cli_key": "later-0000", "env": env, "root": root}


@pytest.fixture(scope="module")
def dagster_dev(site):
    """One `dagster dev` on 127.0.0.1 for the module, in its own process group, stopped by its pgid."""
    with webserver.dagster_dev(site["env"], site["root"] / "dagster_dev.log") as url:
        yield url


def _job_execute(site: dict, job: str, *extra: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """`dagster job execute -m stratum_dagster.definitions -j JOB --tags '{"dagster/partition": KEY}'`."""
    tags = json.dumps({"dagster/partition": site["key"]})
    return subprocess.run([str(webserver.VENV_BIN / "dagster"), "job", "execute", "-m", "stratum_dagster.definitions",
                           "-j", job, "--tags", tags, *extra], env=env or site["env"], capture_output=True,
                          text=True, timeout=300)


def test_dagster_job_execute_with_a_partition_tag_writes_the_shards_artifacts(site):
    done = _job_execute(site, "pixel_job")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for image_id in ("people/a", "people/b"):
        assert np.load(site["out"] / image_id / "pixel.npy").shape == (3, 1216, 832)


def test_dagster_job_execute_enrich_job_writes_every_default_artifact_of_the_shard(site, tmp_path):
    """The README's command: smoke models for every model pass, the fake Ollama through `--config`."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    pytest.importorskip("onnxruntime")
    from stratum_testing.ollama import FakeOllama

    models = build_smoke_model_dir(tmp_path / "models")
    with FakeOllama(captions="A person stands in front of a grey wall.") as url:
        run_yaml = tmp_path / "run.yaml"
        run_yaml.write_text(json.dumps({"resources": {"caption_server": {"config": {"url": f"{url}/api/generate"}}}}))
        done = _job_execute(site, "enrich_job", "--config", str(run_yaml),
                            env={**site["env"], "STRATUM_MODEL_DIR": str(models)})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for image_id in ("people/a", "people/b"):
        folder = site["out"] / image_id
        assert (folder / "caption.txt").read_text() == "A person stands in front of a grey wall."
        assert {p.name for p in folder.iterdir()} >= {f for name in ("metadata", *DEFAULT_PASSES)
                                                      for f in pass_files(name)}
        assert np.load(folder / "seg.npy").shape == (1216, 832)
        assert np.load(folder / "t5_hidden.npy").shape == (512, 1024)
        assert not list(folder.glob(f"{FAILURE_PREFIX}*"))


def test_graphql_lists_the_assets_and_the_shard_partitions(dagster_dev, site):
    query = """{ assetNodes { assetKey { path } groupName partitionKeysByDimension { name partitionKeys } } }"""
    nodes = webserver.graphql(dagster_dev, query)["assetNodes"]
    by_name = {"/".join(n["assetKey"]["path"]): n for n in nodes}
    assert set(by_name) == {*REGISTRY, "hub_dataset", "source_images"}
    [dimension] = by_name["seg"]["partitionKeysByDimension"]
    assert site["key"] in dimension["partitionKeys"]


def test_shards_registered_by_the_cli_become_partitions_within_a_daemon_tick_without_any_run(dagster_dev, site):
    keys = webserver.wait_for_partition(dagster_dev, site["cli_key"])
    assert sorted(keys) == sorted([site["key"], site["cli_key"]])
    assert webserver.runs(dagster_dev, tags=[{"key": "dagster/partition", "value": site["cli_key"]}]) == []


def test_two_runs_of_one_shard_launched_together_run_one_after_the_other(dagster_dev, site):
    """dagster.yaml.example's tag limit on dagster/partition: the second run waits in the queue."""
    first, second = (webserver.launch(dagster_dev, "metadata_job", site["key"]) for _ in range(2))
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        runs = {r["runId"]: r for r in webserver.runs(dagster_dev, run_ids=[first, second])}
        if all(r["status"] in ("SUCCESS", "FAILURE", "CANCELED") for r in runs.values()):
            break
        assert not all(r["status"] == "STARTED" for r in runs.values()), "both runs of one shard in progress"
        time.sleep(0.5)
    assert [runs[first]["status"], runs[second]["status"]] == ["SUCCESS", "SUCCESS"]
    earlier, later = sorted(runs.values(), key=lambda r: r["startTime"])
    assert later["startTime"] >= earlier["endTime"]


def test_terminating_a_run_stops_its_step_before_the_next_image(dagster_dev, site):
    """Terminate (as the UI's button does) while the first caption request is in flight: the run is
    canceled and the engine sends no further request."""
    from stratum_testing.ollama import FakeOllama

    fake = FakeOllama(captions="A person.", latency=20)
    with fake as url:
        one_at_a_time = {"input_root": {"env": "STRATUM_INPUT_DIR"}, "output_root": {"env": "STRATUM_OUTPUT_DIR"},
                         "batch_size": 1}
        config = {"resources": {"stratum": {"config": one_at_a_time},
                                "caption_server": {"config": {"url": f"{url}/api/generate", "concurrency": 1}}}}
        webserver.wait_for_partition(dagster_dev, site["cli_key"])  # a shard no other test runs: no captions yet
        run_id = webserver.launch(dagster_dev, "caption_job", site["cli_key"], config)
        deadline = time.monotonic() + 180
        while fake.generate_count == 0 and time.monotonic() < deadline:
            time.sleep(0.5)
        assert fake.generate_count == 1
        terminated = webserver.graphql(dagster_dev, """mutation($id: String!) { terminateRun(runId: $id) { __typename } }""",
                              {"id": run_id})["terminateRun"]
        assert terminated["__typename"] == "TerminateRunSuccess", terminated
        while webserver.runs(dagster_dev, run_ids=[run_id])[0]["status"] not in ("CANCELED", "FAILURE", "SUCCESS"):
            assert time.monotonic() < deadline + 60, "the run did not stop"
            time.sleep(0.5)
        assert webserver.runs(dagster_dev, run_ids=[run_id])[0]["status"] == "CANCELED"
        assert fake.generate_count == 1  # the second image was never sent
    assert not (site["out"] / "later" / "d" / "caption.txt").exists()


def test_the_asset_catalog_shows_every_asset_with_its_partitions_and_no_dialog_over_it(dagster_dev, site, tmp_path):
    """What a user sees in headless Chromium after the page's scripts ran: the rendered DOM."""
    if CHROMIUM is None:
        pytest.skip("Chromium is not installed (apt-get install -y chromium)")
    webserver.wait_for_partition(dagster_dev, site["cli_key"])
    dom = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                          "--disable-component-update", "--disable-sync", "--no-first-run",
                          f"--user-data-dir={tmp_path / 'chromium'}", "--window-size=1400,2000",
                          "--virtual-time-budget=30000", "--dump-dom", dagster_dev + CATALOG_PAGE],
                         capture_output=True, text=True, timeout=180).stdout
    (site["root"] / "asset_catalog.html").write_text(dom)
    page = _Page()
    page.feed(dom)
    for name in (*REGISTRY, "hub_dataset"):
        assert name in page.texts, f"asset {name} is not on the page"
    # every pass asset: the shard added directly and the CLI's
    assert page.texts.count("2 partitions") == len(REGISTRY)
    assert not page.dialogs, f"a dialog covers the page: {page.dialogs}"


class _Page(HTMLParser):
    """The rendered page's text nodes, and the elements that would sit over it as a modal dialog."""

    def __init__(self) -> None:
        super().__init__()
        self.texts: list[str] = []
        self.dialogs: list[dict] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        if attributes.get("role") in ("dialog", "alertdialog") or attributes.get("aria-modal") == "true":
            self.dialogs.append(attributes)

    def handle_data(self, data: str) -> None:
        if data.strip():
            self.texts.append(data.strip())
