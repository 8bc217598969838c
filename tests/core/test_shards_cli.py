"""`stratum shards register | list` and `stratum process --shard-key` agree on shard membership."""

from __future__ import annotations

from pathlib import Path

import pytest

from stratum_core.cli import main
from stratum_testing import images
from stratum_testing.cli import process_cli


@pytest.fixture
def input_dir(tmp_path) -> Path:
    sizes = {**images.numbered(3, (40, 30), "ffhq/{:05d}.png"), "loose.jpg": (30, 40)}
    return images.write_sources(tmp_path / "in", sizes)


def test_register_prints_the_new_shards(input_dir, tmp_path, capsys):
    assert main(["shards", "register", str(input_dir), "-o", str(tmp_path / "out"), "--shard-size", "2"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == ["_root-0000\t1 images", "ffhq-0000\t2 images", "ffhq-0001\t1 images", "3 new shards, 3 in all"]


def test_registering_again_adds_only_new_images(input_dir, tmp_path, capsys):
    main(["shards", "register", str(input_dir), "-o", str(tmp_path / "out"), "--shard-size", "2"])
    images.write_gradient(input_dir / "ffhq" / "00009.png", 40, 30)
    capsys.readouterr()
    main(["shards", "register", str(input_dir), "-o", str(tmp_path / "out"), "--shard-size", "2"])
    assert capsys.readouterr().out.splitlines() == ["ffhq-0002\t1 images", "1 new shards, 4 in all"]


def test_process_with_a_shard_key_runs_exactly_that_shard(input_dir, tmp_path, capsys):
    out = tmp_path / "out"
    main(["shards", "register", str(input_dir), "-o", str(out), "--shard-size", "2"])
    assert process_cli(input_dir, out, "--passes", "pixel", "--shard-key", "ffhq-0000") == 0
    done = sorted(str(p.parent.relative_to(out)) for p in out.rglob("pixel.npy"))
    assert done == ["ffhq/00000", "ffhq/00001"]
    capsys.readouterr()
    main(["shards", "list", str(out)])
    listing = capsys.readouterr().out.splitlines()
    assert listing[1] == "ffhq-0000\t2 images\tcomplete: metadata,pixel"
    assert listing[2] == "ffhq-0001\t1 images\tcomplete: -"


def test_list_on_a_missing_folder_is_an_error(tmp_path, caplog):
    assert main(["shards", "list", str(tmp_path / "nope")]) == 2
    assert f"no dataset at {tmp_path / 'nope'}" in caplog.text


def test_list_without_registered_shards_says_how_to_register_them(input_dir, caplog):
    assert main(["shards", "list", str(input_dir)]) == 2
    assert "no shards registered in" in caplog.text and "stratum shards register" in caplog.text
