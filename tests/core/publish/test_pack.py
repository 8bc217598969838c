"""Packing: tars byte-identical to Python's tarfile, deterministic, held in memory and freed when done
(or kept by a PayloadPool for the next chunk, which then holds only that chunk's bytes)."""

from __future__ import annotations

import io
import os
import sys
import tarfile

import pytest

from stratum_core.publish import pack
from stratum_core.publish.layout import member_name, tar_artifacts
from tests.core.publish.hubdata import IDS, make_dataset

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="memfd payloads are Linux-only")


def _tarfile_bytes(root, ids) -> bytes:
    """The same members written by the standard library (PAX, mtime 0, owner 0, mode 644)."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT, encoding="utf-8") as tar:
        for image_id in ids:
            for artifact in tar_artifacts("dinov3"):
                data = (root / image_id / artifact.filename).read_bytes()
                info = tarfile.TarInfo(member_name(image_id, artifact))
                info.size, info.mtime, info.mode, info.uid, info.gid = len(data), 0, 0o644, 0, 0
                info.uname = info.gname = ""
                tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def test_tar_is_byte_identical_to_python_tarfile(tmp_path):
    ids = make_dataset(tmp_path / "ds", patches=37)  # 37 rows: data not a multiple of 512 bytes
    with pack.pack_tar(tmp_path / "ds", "dinov3", ids, "dinov3/00000/00000-00005.tar") as packed:
        data = packed.payload.read()
        assert packed.size == len(data)
    assert data == _tarfile_bytes(tmp_path / "ds", ids)


def test_packing_twice_gives_the_same_bytes(tmp_path):
    ids = make_dataset(tmp_path / "ds")
    for layer in ("tar", "data"):
        digests = set()
        for _ in range(2):
            packed = pack.pack_tar(tmp_path / "ds", "dinov3", ids, "dinov3/x.tar") if layer == "tar" else \
                pack.pack_data(tmp_path / "ds", ids, ("caption", "dinov3"), "data/x.parquet")
            with packed:
                digests.add(packed.sha256())
        assert len(digests) == 1


@linux_only
def test_payload_lives_in_memory_not_on_disk(tmp_path):
    ids = make_dataset(tmp_path / "ds")
    spill = tmp_path / "spill"
    spill.mkdir()
    with pack.pack_tar(tmp_path / "ds", "dinov3", ids, "dinov3/x.tar", spill) as packed:
        assert os.readlink(packed.payload.path).startswith("/memfd:")
        assert list(spill.iterdir()) == []


def test_close_frees_the_payload(tmp_path):
    ids = make_dataset(tmp_path / "ds")
    packed = pack.pack_tar(tmp_path / "ds", "dinov3", ids, "dinov3/x.tar")
    fd = packed.payload.fd
    packed.close()
    assert packed.payload.closed
    with pytest.raises(OSError):
        os.fstat(fd)


def test_spilled_payload_is_removed_on_close(tmp_path, monkeypatch):
    ids = make_dataset(tmp_path / "ds")
    monkeypatch.setattr(pack, "_memfd", lambda name: None)  # a platform without memfd
    spill = tmp_path / "spill"
    spill.mkdir()
    with pack.pack_tar(tmp_path / "ds", "dinov3", ids, "dinov3/x.tar", spill) as packed:
        assert [p.name for p in spill.iterdir()] == [os.path.basename(packed.payload.path)]
        assert packed.payload.read() == _tarfile_bytes(tmp_path / "ds", ids)
    assert list(spill.iterdir()) == []


def test_missing_source_file_fails_and_frees_the_payload(tmp_path, monkeypatch):
    ids = make_dataset(tmp_path / "ds")
    (tmp_path / "ds" / IDS[1] / "dinov3_patches.npy").unlink()
    opened = []
    real = pack.Payload.__init__

    def record(self, *args, **kwargs):
        real(self, *args, **kwargs)
        opened.append(self)

    monkeypatch.setattr(pack.Payload, "__init__", record)
    with pytest.raises(FileNotFoundError):
        pack.pack_tar(tmp_path / "ds", "dinov3", ids, "dinov3/x.tar")
    assert [p.closed for p in opened] == [True]


def open_payloads() -> list[str]:
    """Publish memfds this process still holds: chunk payloads (named `stratum-<chunk path>`) and pooled
    ones (`stratum-pool`, whichever chunk they hold or held)."""
    links = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            links.append(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:
            continue
    return [link.removeprefix("/memfd:").removesuffix(" (deleted)") for link in links
            if link.startswith("/memfd:stratum-")]


@linux_only
def test_a_reused_payload_holds_only_the_new_chunk(tmp_path):
    ids = make_dataset(tmp_path / "ds", patches=37)
    with pack.pack_tar(tmp_path / "ds", "dinov3", ids[:2], "dinov3/small.tar") as fresh:
        expected, expected_sha = fresh.payload.read(), fresh.sha256()
    with pack.PayloadPool() as pool:
        bigger = pack.pack_tar(tmp_path / "ds", "dinov3", ids, "dinov3/big.tar", pool=pool)
        fd = bigger.payload.fd
        bigger.close()
        with pack.pack_tar(tmp_path / "ds", "dinov3", ids[:2], "dinov3/small.tar", pool=pool) as packed:
            assert packed.payload.fd == fd  # the same memfd, its stale tail cut
            assert packed.payload.read() == expected and packed.sha256() == expected_sha
            assert os.stat(packed.payload.path).st_size == packed.size == len(expected)


@linux_only
def test_a_parquet_packed_into_a_reused_payload_equals_a_fresh_one(tmp_path):
    ids = make_dataset(tmp_path / "ds", patches=37)
    with pack.pack_data(tmp_path / "ds", ids, ("caption", "dinov3"), "data/x.parquet") as fresh:
        expected = fresh.payload.read()
    with pack.PayloadPool() as pool:
        pack.pack_tar(tmp_path / "ds", "dinov3", ids, "dinov3/x.tar", pool=pool).close()  # larger than the parquet
        with pack.pack_data(tmp_path / "ds", ids, ("caption", "dinov3"), "data/x.parquet", pool=pool) as packed:
            assert packed.size == len(expected) and packed.payload.read() == expected


@linux_only
def test_an_open_payload_is_never_lent_again(tmp_path):
    ids = make_dataset(tmp_path / "ds")
    with pack.PayloadPool() as pool:
        with pack.pack_tar(tmp_path / "ds", "dinov3", ids[:1], "dinov3/a.tar", pool=pool) as kept:
            before = kept.payload.read()
            with pack.pack_tar(tmp_path / "ds", "dinov3", ids, "dinov3/b.tar", pool=pool) as other:
                assert other.payload.fd != kept.payload.fd and pool.lent == 2
            assert kept.payload.read() == before


@linux_only
def test_the_pool_keeps_one_idle_memfd_until_closed(tmp_path):
    ids = make_dataset(tmp_path / "ds")
    pool = pack.PayloadPool()
    first = pack.pack_tar(tmp_path / "ds", "dinov3", ids[:1], "dinov3/a.tar", pool=pool)
    second = pack.pack_tar(tmp_path / "ds", "dinov3", ids, "dinov3/b.tar", pool=pool)
    first.close()
    second.close()
    assert (pool.lent, pool.idle, open_payloads()) == (0, 1, ["stratum-pool"])
    pool.close()
    assert open_payloads() == []


def test_without_memfd_a_pool_spills_to_its_dir_and_removes_the_file(tmp_path, monkeypatch):
    ids = make_dataset(tmp_path / "ds")
    monkeypatch.setattr(pack, "_memfd", lambda name: None)
    spill = tmp_path / "spill"
    spill.mkdir()
    with pack.PayloadPool(spill) as pool:
        for _ in range(2):
            with pack.pack_tar(tmp_path / "ds", "dinov3", ids, "dinov3/x.tar", pool=pool) as packed:
                assert [p.name for p in spill.iterdir()] == [os.path.basename(packed.payload.path)]
                assert packed.payload.read() == _tarfile_bytes(tmp_path / "ds", ids)
            assert list(spill.iterdir()) == [] and pool.idle == 0


def test_a_large_parquet_read_by_threads_keeps_row_order_and_bytes(tmp_path, monkeypatch):
    import pyarrow.parquet as pq

    ids = make_dataset(tmp_path / "ds", ids=tuple(f"g{i % 7}/img{i:03d}" for i in range(150)), patches=1)
    with pack.pack_data(tmp_path / "ds", ids, ("caption", "dinov3"), "data/x.parquet") as threaded:
        table = pq.read_table(io.BytesIO(threaded.payload.read()))
        assert table.column("image_id").to_pylist() == ids
        by_id = {f"g{i % 7}/img{i:03d}": f"caption {i}" for i in range(150)}
        assert table.column("caption").to_pylist() == [by_id[i] for i in ids]
        monkeypatch.setattr(pack, "ROW_READERS", 1)
        with pack.pack_data(tmp_path / "ds", ids, ("caption", "dinov3"), "data/x.parquet") as one_thread:
            assert one_thread.payload.read() == threaded.payload.read()
