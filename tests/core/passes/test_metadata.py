"""The metadata pass: the source fingerprint in metadata.json comes from the bytes the intake read."""

from __future__ import annotations

import builtins
import hashlib
import io
import json
import os
from collections import Counter
from pathlib import Path

from stratum_core.cli import main
from stratum_core.intake import decode
from stratum_testing import images


def test_decode_fingerprints_the_bytes_it_decoded(tmp_path):
    path = tmp_path / "a.png"
    images.write_gradient(path, 40, 30, seed=1)
    read = decode(path).read
    assert read.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert (read.size, read.mtime_ns) == (path.stat().st_size, path.stat().st_mtime_ns)


def test_a_run_reads_each_source_once_and_records_its_fingerprint(tmp_path, monkeypatch, capsys):
    sources = tmp_path / "in"
    for i, name in enumerate(("a.png", "b.jpg", "c.png")):
        images.write_gradient(sources / name, 48 + 8 * i, 40, seed=i)
    opened: Counter = Counter()

    def counting(real):
        def open_(file, *args, **kwargs):
            if isinstance(file, (str, bytes, os.PathLike)) and Path(os.fsdecode(file)).parent == sources:
                opened[Path(os.fsdecode(file)).name] += 1
            return real(file, *args, **kwargs)
        return open_

    monkeypatch.setattr(builtins, "open", counting(builtins.open))
    monkeypatch.setattr(io, "open", counting(io.open))
    monkeypatch.setattr(os, "open", counting(os.open))
    output = tmp_path / "out"
    assert main(["process", str(sources), "-o", str(output), "--passes", "pixel", "--workers", "2",
                 "--progress-every", "3600"]) == 0
    assert opened == {"a.png": 1, "b.jpg": 1, "c.png": 1}
    for name in opened:
        source = json.loads((output / Path(name).stem / "metadata.json").read_text())["source"]
        path = sources / name
        assert source["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
        assert (source["size"], source["mtime_ns"]) == (path.stat().st_size, path.stat().st_mtime_ns)
