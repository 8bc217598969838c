"""Before a run: every pass that cannot run here is named at once, with what to fetch or start."""

from __future__ import annotations

import socket

from stratum_core.passes import DEFAULT_PASSES
from stratum_testing.cli import process_cli
from stratum_testing.images import write_solid


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_default_run_lists_every_setup_problem_at_once_and_writes_nothing(tmp_path, caplog, monkeypatch):
    monkeypatch.setenv("STRATUM_MODEL_DIR", str(tmp_path / "no-models"))
    (tmp_path / "in").mkdir()
    write_solid(tmp_path / "in" / "a.png", (64, 64), (9, 9, 9))
    code = process_cli(tmp_path / "in", tmp_path / "out", "--device", "cpu",
                       "--ollama-url", f"http://127.0.0.1:{_closed_port()}/api/generate")
    assert code == 2
    problems = [line.strip() for line in caplog.text.splitlines() if line.startswith("  ")]
    # no weights and no caption server here: every default pass has a problem, in dependency order
    assert [line.split(":")[0] for line in problems] == list(DEFAULT_PASSES)
    by_pass = {line.split(":")[0]: line for line in problems}
    assert "does not answer" in by_pass["caption"]
    assert by_pass["dinov3"].startswith("dinov3: weights missing (facebook/dinov3-vitl16-pretrain-lvd1689m) — "
                                        "stratum models download --passes dinov3 (looked in ")
    assert str(tmp_path / "no-models" / "facebook" / "dinov3-vitl16-pretrain-lvd1689m") in by_pass["dinov3"]
    assert by_pass["depth"] == "depth: needs seg, which cannot run here"
    assert not (tmp_path / "out").exists()


def test_a_run_whose_passes_can_all_run_is_not_stopped(tmp_path):
    (tmp_path / "in").mkdir()
    write_solid(tmp_path / "in" / "a.png", (64, 64), (9, 9, 9))
    assert process_cli(tmp_path / "in", tmp_path / "out", "--passes", "pixel",
                       "--device", "cpu") == 0
    assert (tmp_path / "out" / "a" / "pixel.npy").is_file()
