"""From the shell: `dagster job execute` on a shard, and `dagster dev` serving GraphQL and the UI."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import dagster as dg
import numpy as np
import pytest

from stratum_core.store import FAILURE_PREFIX
from tests.dagster.helpers import register, write_tree
from tests.fakes.model_dir import build_smoke_model_dir

VENV_BIN = Path(sys.executable).parent
GROUP_PAGE = "/locations/__repository__@stratum_dagster.definitions/asset-groups/passes"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> dict:
    """A source tree with one registered shard, and the environment the code location reads."""
    root = tmp_path_factory.mktemp("site")
    src, out, home = root / "in", root / "out", root / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\nnux:\n  enabled: false\n")
    write_tree(src, ["people/a.png", "people/b.png"])
    with dg.DagsterInstance.from_config(str(home)) as instance:
        [key] = register(src, out, instance, "people")
    env = {**os.environ, "DAGSTER_HOME": str(home), "STRATUM_INPUT_DIR": str(src), "STRATUM_OUTPUT_DIR": str(out),
           "STRATUM_HUB_REPO": "someone/dataset", "PYTHONUNBUFFERED": "1"}
    return {"src": src, "out": out, "home": home, "key": key, "env": env, "root": root}


@pytest.fixture(scope="module")
def dagster_dev(site):
    """One `dagster dev` on 127.0.0.1 for the module, in its own process group, stopped by its pgid."""
    port = _free_port()
    log = open(site["root"] / "dagster_dev.log", "wb")
    process = subprocess.Popen(
        [str(VENV_BIN / "dagster"), "dev", "-m", "stratum_dagster.definitions", "-h", "127.0.0.1", "-p", str(port)],
        env=site["env"], cwd=Path(__file__).parents[2], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_for(url + "/server_info", process, timeout=120)
        yield url
    finally:
        _stop_group(process)
        log.close()


def _job_execute(site: dict, job: str, *extra: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """`dagster job execute -m stratum_dagster.definitions -j JOB --tags '{"dagster/partition": KEY}'`."""
    tags = json.dumps({"dagster/partition": site["key"]})
    return subprocess.run([str(VENV_BIN / "dagster"), "job", "execute", "-m", "stratum_dagster.definitions",
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
    from tests.fakes.ollama import FakeOllama

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
        assert {p.name for p in folder.iterdir()} >= {
            "metadata.json", "caption.txt", "dinov3_cls.npy", "dinov3_patches.npy", "t5_hidden.npy", "t5_mask.npy",
            "pose.npy", "seg.npy", "depth.npy", "normal.npy"}
        assert np.load(folder / "seg.npy").shape == (1216, 832)
        assert np.load(folder / "t5_hidden.npy").shape == (512, 1024)
        assert not list(folder.glob(f"{FAILURE_PREFIX}*"))


def test_graphql_lists_the_assets_and_the_shard_partitions(dagster_dev, site):
    query = """{ assetNodes { assetKey { path } groupName partitionKeysByDimension { name partitionKeys } } }"""
    nodes = _graphql(dagster_dev, query)["assetNodes"]
    by_name = {"/".join(n["assetKey"]["path"]): n for n in nodes}
    assert set(by_name) == {"metadata", "caption", "dinov3", "t5", "pose", "seg", "depth", "normal", "pixel",
                            "hub_dataset"}
    assert by_name["seg"]["partitionKeysByDimension"] == [{"name": "default", "partitionKeys": [site["key"]]}]


def test_the_asset_graph_renders_in_headless_chromium(dagster_dev, site, tmp_path):
    if CHROMIUM is None:
        pytest.skip("Chromium is not installed (apt-get install -y chromium)")
    screenshot = site["root"] / "asset_graph.png"
    subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--no-first-run",
                    f"--user-data-dir={tmp_path / 'chromium'}", f"--screenshot={screenshot}",
                    "--window-size=1400,900", "--virtual-time-budget=15000", dagster_dev + GROUP_PAGE],
                   capture_output=True, timeout=120)
    from PIL import Image

    image = np.asarray(Image.open(screenshot).convert("L"))
    assert image.shape == (900, 1400)
    assert image.std() > 5  # a rendered page, not a blank one


def _graphql(url: str, query: str) -> dict:
    request = urllib.request.Request(url + "/graphql", data=json.dumps({"query": query}).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        payload = json.loads(response.read())
    assert "errors" not in payload, payload
    return payload["data"]


def _free_port() -> int:
    # dagster dev takes no port 0: ask the OS for a free one and hand it over.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for(url: str, process: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"dagster dev exited with {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"dagster dev did not answer on {url} within {timeout:.0f}s")


def _stop_group(process: subprocess.Popen) -> None:
    pgid = process.pid  # start_new_session: the group id is the leader's pid
    try:
        os.killpg(pgid, signal.SIGTERM)
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(pgid, signal.SIGKILL)
        process.wait(timeout=10)
    except ProcessLookupError:
        pass
