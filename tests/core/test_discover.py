"""Source discovery: extensions, order, ids, image lists, shards, collisions, symlinks, odd names."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from stratum_core.discover import discover, image_id_for, iter_image_dirs
from stratum_core.errors import ConfigError


def touch(root: Path, *rel_paths: str) -> None:
    for rel in rel_paths:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")  # discovery never opens the files


def rel_paths(found) -> list[str]:
    return [s.rel_path for s in found.images]


def errors_by_source(found) -> dict[str, str]:
    return {e.source: e.reason for e in found.errors}


def test_extensions_are_matched_case_insensitively(tmp_path):
    touch(tmp_path, "a.JPG", "b.Jpeg", "c.PNG", "d.webp", "e.BMP", "f.tif", "g.TIFF", "h.gif", "i.txt", "j")
    assert rel_paths(discover(tmp_path)) == ["a.JPG", "b.Jpeg", "c.PNG", "d.webp", "e.BMP", "f.tif", "g.TIFF"]


def test_an_image_format_stratum_does_not_read_is_reported_with_the_accepted_extensions(tmp_path):
    touch(tmp_path, "a.png", "anim.GIF", "phone.heic", "notes.txt")
    found = discover(tmp_path)
    assert rel_paths(found) == ["a.png"]
    assert errors_by_source(found) == {"anim.GIF": "unsupported_format", "phone.heic": "unsupported_format"}
    assert {e.message for e in found.errors} == {
        "not a format stratum reads; accepted: .bmp .jpeg .jpg .png .tif .tiff .webp"}


def test_order_is_sorted_by_posix_relative_path(tmp_path):
    touch(tmp_path, "b/2.png", "a/10.png", "a/9.png", "B.png", "a.png", "a/sub/1.png")
    assert rel_paths(discover(tmp_path)) == ["B.png", "a.png", "a/10.png", "a/9.png", "a/sub/1.png", "b/2.png"]


def test_image_ids_mirror_the_tree_without_extension(tmp_path):
    touch(tmp_path, "ffhq/00001.png", "top.jpeg", "deep/er/x.y.jpg")
    found = discover(tmp_path)
    assert [s.image_id for s in found.images] == ["deep/er/x.y", "ffhq/00001", "top"]
    assert image_id_for("ffhq/00001.png") == "ffhq/00001"


def test_hidden_files_and_folders_are_skipped(tmp_path):
    touch(tmp_path, "a.png", ".b.png", "._a.jpg", ".thumbs/c.png")
    assert rel_paths(discover(tmp_path)) == ["a.png"]


def test_unicode_and_space_names_are_kept_verbatim(tmp_path):
    touch(tmp_path, "sub dir/café ünï 画像.jpg", "with space.png")
    found = discover(tmp_path)
    assert rel_paths(found) == ["sub dir/café ünï 画像.jpg", "with space.png"]
    assert found.images[0].image_id == "sub dir/café ünï 画像"
    assert found.images[0].path.is_file()


def test_missing_input_dir_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        discover(tmp_path / "nope")


def test_same_id_from_two_extensions_is_an_error_for_both(tmp_path):
    touch(tmp_path, "a.jpg", "a.png", "b.png")
    found = discover(tmp_path)
    assert rel_paths(found) == ["b.png"]
    assert errors_by_source(found) == {"a.jpg": "id_collision", "a.png": "id_collision"}
    assert all("a.jpg, a.png" in e.message for e in found.errors)


def test_symlink_outside_the_input_is_refused(tmp_path):
    outside = tmp_path / "outside"
    touch(outside, "secret.png", "dir/x.png")
    root = tmp_path / "in"
    touch(root, "ok.png")
    os.symlink(outside / "secret.png", root / "link.png")
    os.symlink(outside / "dir", root / "linkdir")
    found = discover(root)
    assert rel_paths(found) == ["ok.png"]
    assert errors_by_source(found) == {"link.png": "outside_input", "linkdir": "outside_input"}
    assert "outside the input" in found.errors[0].message


def test_symlink_inside_the_input_is_followed(tmp_path):
    touch(tmp_path, "real/a.png")
    os.symlink(tmp_path / "real" / "a.png", tmp_path / "alias.png")
    found = discover(tmp_path)
    assert rel_paths(found) == ["alias.png", "real/a.png"]
    assert found.errors == []


def test_two_links_to_one_folder_walk_it_once_under_a_stable_name(tmp_path):
    touch(tmp_path, "z_real/a.png")
    os.symlink(tmp_path / "z_real", tmp_path / "b_link")
    os.symlink(tmp_path / "z_real", tmp_path / "a_link")
    assert rel_paths(discover(tmp_path)) == ["a_link/a.png"]


# ---------------------------------------------------------------- --image-list

@pytest.fixture
def listed_tree(tmp_path):
    root = tmp_path / "in"
    touch(root, "a.png", "sub/b.jpg", "c.png", "notes.txt")
    touch(tmp_path, "outside.png")
    return root


def write_list(tmp_path: Path, *lines: str) -> Path:
    path = tmp_path / "list.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_image_list_ignores_comments_and_blank_lines(tmp_path, listed_tree):
    found = discover(listed_tree, write_list(tmp_path, "# header", "", "sub/b.jpg", "   ", "  a.png  ", "#c.png"))
    assert rel_paths(found) == ["a.png", "sub/b.jpg"]
    assert found.errors == []


def test_image_list_accepts_an_absolute_path_inside(tmp_path, listed_tree):
    found = discover(listed_tree, write_list(tmp_path, str(listed_tree / "sub" / "b.jpg")))
    assert rel_paths(found) == ["sub/b.jpg"]
    assert found.images[0].image_id == "sub/b"


def test_image_list_reports_a_missing_file(tmp_path, listed_tree):
    found = discover(listed_tree, write_list(tmp_path, "a.png", "gone.png"))
    assert rel_paths(found) == ["a.png"]
    assert errors_by_source(found) == {"gone.png": "not_found"}


def test_image_list_refuses_a_dotdot_line_outside(tmp_path, listed_tree):
    found = discover(listed_tree, write_list(tmp_path, "../outside.png", "a.png"))
    assert rel_paths(found) == ["a.png"]
    assert errors_by_source(found) == {"../outside.png": "outside_input"}


def test_image_list_refuses_an_absolute_path_outside(tmp_path, listed_tree):
    line = str(tmp_path / "outside.png")
    assert errors_by_source(discover(listed_tree, write_list(tmp_path, line))) == {line: "outside_input"}


def test_image_list_refuses_a_non_image(tmp_path, listed_tree):
    found = discover(listed_tree, write_list(tmp_path, "notes.txt"))
    assert found.images == []
    assert errors_by_source(found) == {"notes.txt": "not_an_image"}


def test_image_list_dotdot_that_stays_inside_is_normalised(tmp_path, listed_tree):
    found = discover(listed_tree, write_list(tmp_path, "sub/../a.png"))
    assert rel_paths(found) == ["a.png"]


@pytest.mark.parametrize("line", [".thumbs/a.png", ".b.png", ".stratum/x.png"])
def test_image_list_refuses_a_hidden_path(tmp_path, listed_tree, line):
    # Its output would sit in a hidden folder that status and verify never walk.
    touch(listed_tree, line)
    found = discover(listed_tree, write_list(tmp_path, line, "a.png"))
    assert rel_paths(found) == ["a.png"]
    assert errors_by_source(found) == {line: "hidden"}


def test_missing_image_list_file_is_a_config_error(tmp_path, listed_tree):
    with pytest.raises(ConfigError, match="cannot read image list"):
        discover(listed_tree, tmp_path / "no-list.txt")


# ---------------------------------------------------------------- --shard

def test_shard_takes_every_mth_image_from_position_n(tmp_path):
    touch(tmp_path, *(f"{i:02d}.png" for i in range(10)))
    assert rel_paths(discover(tmp_path, shard="1/3")) == ["01.png", "04.png", "07.png"]


def test_shards_are_disjoint_and_cover_every_image(tmp_path):
    touch(tmp_path, *(f"d{i % 3}/{i:03d}.png" for i in range(23)))
    everything = rel_paths(discover(tmp_path))
    shards = [rel_paths(discover(tmp_path, shard=f"{n}/4")) for n in range(4)]
    assert sorted(p for s in shards for p in s) == everything
    assert sum(len(s) for s in shards) == len(everything)


@pytest.mark.parametrize("spec", ["3/3", "-1/3", "1/0", "x", "1/2/3", "a/b"])
def test_bad_shard_spec_is_a_config_error(tmp_path, spec):
    touch(tmp_path, "a.png")
    with pytest.raises(ConfigError, match="shard"):
        discover(tmp_path, shard=spec)


# ---------------------------------------------------------------- output walk

def test_iter_image_dirs_yields_image_dirs_with_their_files(tmp_path):
    touch(tmp_path, "a/metadata.json", "a/pixel.npy", "a/b/metadata.json", "c/.failed-metadata.json",
          "d/stray.txt", ".stratum/runs/r.json")
    found = dict(iter_image_dirs(tmp_path))
    assert found == {"a": {"metadata.json", "pixel.npy"}, "a/b": {"metadata.json"},
                     "c": {".failed-metadata.json"}}


def test_iter_image_dirs_lists_every_file_of_a_dir_that_also_holds_other_names(tmp_path):
    touch(tmp_path, "a/metadata.json", "a/.provenance.json", "a/notes.txt", "a/.tmp-1234", "a/b/seg.npy")
    found = dict(iter_image_dirs(tmp_path))
    assert found == {"a": {"metadata.json", ".provenance.json", "notes.txt", ".tmp-1234"}, "a/b": {"seg.npy"}}


def test_a_dir_holding_only_a_provenance_record_is_not_an_image_dir(tmp_path):
    touch(tmp_path, "a/.provenance.json", "b/.provenance.json", "b/pixel.npy")
    assert dict(iter_image_dirs(tmp_path)) == {"b": {".provenance.json", "pixel.npy"}}
