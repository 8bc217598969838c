"""Find source images, give them stable ids, and select shards or listed subsets."""

from __future__ import annotations

import os
import stat
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Iterable, Iterator

from stratum_core.artifacts import BY_FILENAME
from stratum_core.errors import ConfigError
from stratum_core.store import FAILURE_PREFIX

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"})
# Image formats people keep next to their photos that stratum does not take: reported, never silently
# skipped (an animated GIF or a phone's HEIC has no single, well-defined crop to train on).
UNSUPPORTED_IMAGE_EXTENSIONS = frozenset({".gif", ".heic", ".heif", ".avif", ".jxl", ".jp2", ".ico", ".psd", ".svg"})


class SourceImage:
    """One source file: `rel_path` is POSIX and relative to the input dir; `path` is where it is read.

    Millions of these live through a run (a no-op re-run of 10M images holds them all), so each
    holds strings only: `path` is rebuilt on use from a prefix shared by every image under it and
    `rel_path` (a Path per image cost ~300 bytes). Immutable; equal, hashed and ordered by `rel_path`.
    """

    __slots__ = ("rel_path", "image_id", "_prefix", "_full")

    def __init__(self, rel_path: str, path: str | os.PathLike):
        where = os.fspath(path)
        shared = where.endswith(rel_path) and (len(where) == len(rel_path) or where[-len(rel_path) - 1] == os.sep)
        object.__setattr__(self, "rel_path", rel_path)
        # Computed once: planning reads it several times per image.
        object.__setattr__(self, "image_id", image_id_for(rel_path))
        object.__setattr__(self, "_prefix", sys.intern(where[:len(where) - len(rel_path)]) if shared else "")
        object.__setattr__(self, "_full", None if shared else where)

    @property
    def path(self) -> Path:
        return Path(self._full if self._full is not None else self._prefix + self.rel_path)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"SourceImage is immutable (cannot set {name!r})")

    def __reduce__(self):
        return SourceImage, (self.rel_path, str(self.path))

    def __repr__(self) -> str:
        return f"SourceImage(rel_path={self.rel_path!r}, path={self.path!r})"

    def __eq__(self, other: object) -> bool:
        return self.rel_path == other.rel_path if isinstance(other, SourceImage) else NotImplemented

    def __hash__(self) -> int:
        return hash((self.rel_path,))

    def __lt__(self, other: SourceImage) -> bool:
        return self.rel_path < other.rel_path if isinstance(other, SourceImage) else NotImplemented

    def __le__(self, other: SourceImage) -> bool:
        return self.rel_path <= other.rel_path if isinstance(other, SourceImage) else NotImplemented

    def __gt__(self, other: SourceImage) -> bool:
        return self.rel_path > other.rel_path if isinstance(other, SourceImage) else NotImplemented

    def __ge__(self, other: SourceImage) -> bool:
        return self.rel_path >= other.rel_path if isinstance(other, SourceImage) else NotImplemented


@dataclass(frozen=True)
class DiscoveryError:
    """A source (or list line) that cannot be processed, with a closed-set reason."""

    source: str
    reason: str
    message: str


@dataclass
class Discovery:
    images: list[SourceImage]
    errors: list[DiscoveryError]


def image_id_for(rel_path: str) -> str:
    """`ffhq/00001.png` → `ffhq/00001` (same rule as PurePosixPath.with_suffix(""), without its cost)."""
    name_start = rel_path.rfind("/") + 1
    dot = rel_path.rfind(".")
    if dot > name_start and dot < len(rel_path) - 1:
        return rel_path[:dot]
    return rel_path


def is_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def printable(rel_path: str) -> str:
    """`rel_path` safe to print and store as UTF-8: undecodable bytes of a file name appear as \\xNN."""
    return rel_path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _is_utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:  # os.scandir decodes bytes that are not UTF-8 as lone surrogates
        return False
    return True


def entry_kind(entry: os.DirEntry, root: str, rel_path: str) -> tuple[str, DiscoveryError | None]:
    """("dir" | "file" | "other", refusal): what a directory entry is, or why it is refused.

    Only entries that could hold or be images are refused (a folder, or a name with an image
    extension): a loop, a dangling link or an unreadable entry never stops the scan, and a FIFO
    or device named like an image is reported instead of vanishing. Plain entries cost no
    syscall (the kind comes from the directory listing); only symlinks are stat'ed.
    """
    image_named = is_image_name(entry.name)
    try:
        if entry.is_symlink():
            try:
                mode = os.stat(entry.path).st_mode
            except FileNotFoundError:
                if not image_named:
                    return "other", None
                return "other", DiscoveryError(printable(rel_path), "not_found",
                                               f"dangling symlink to {printable(os.readlink(entry.path))!r}")
            target = os.path.realpath(entry.path)
            if not _inside(target, root):
                if stat.S_ISDIR(mode) or image_named:
                    return "other", DiscoveryError(printable(rel_path), "outside_input",
                                                   f"symlink points outside the input directory: {printable(target)}")
                return "other", None
            kind = "dir" if stat.S_ISDIR(mode) else "file" if stat.S_ISREG(mode) else "special"
        else:
            kind = ("dir" if entry.is_dir(follow_symlinks=False) else
                    "file" if entry.is_file(follow_symlinks=False) else "special")
    except OSError as exc:  # ELOOP (a link to itself), EACCES, ...
        return "other", DiscoveryError(printable(rel_path), "unreadable", f"cannot read: {exc.strerror or exc}")
    if kind == "dir" or image_named:
        if not entry.name.isascii() and not _is_utf8(entry.name):  # isascii: the common case, in C
            return "other", DiscoveryError(printable(rel_path), "bad_name",
                                           "the name is not valid UTF-8; rename it to process it")
    if kind == "dir":
        return kind, None
    if not image_named:
        if kind == "file" and os.path.splitext(entry.name)[1].lower() in UNSUPPORTED_IMAGE_EXTENSIONS:
            return "other", DiscoveryError(printable(rel_path), "unsupported_format",
                                           "not a format stratum reads; accepted: "
                                           + " ".join(sorted(IMAGE_EXTENSIONS)))
        return "other", None
    if kind == "special":
        return "other", DiscoveryError(printable(rel_path), "not_a_file",
                                       "not a regular file (a FIFO, socket or device)")
    return kind, None


def scan(input_dir: Path, recursive: bool = True) -> tuple[list[SourceImage], list[DiscoveryError]]:
    """List image files under `input_dir` (recursively by default), following only symlinks that stay inside."""
    root = os.path.realpath(input_dir)
    images: list[SourceImage] = []
    errors: list[DiscoveryError] = []
    visited: set[str] = {root}

    def walk(directory: str, rel: str) -> None:
        try:
            with os.scandir(directory) as it:
                # Sorted, so which of two links to one folder is walked (and names the ids) is stable;
                # hidden entries (.DS_Store, ._x.jpg, .thumbnails/) are skipped, as the output walk does.
                entries = sorted((e for e in it if not e.name.startswith(".")), key=lambda e: e.name)
        except OSError as exc:
            errors.append(DiscoveryError(printable(rel or "."), "unreadable", f"cannot list directory: {exc}"))
            return
        for entry in entries:
            rel_path = f"{rel}/{entry.name}" if rel else entry.name
            kind, refusal = entry_kind(entry, root, rel_path)
            if refusal is not None:
                errors.append(refusal)
                continue
            if kind == "dir":
                if not recursive:
                    continue
                real = os.path.realpath(entry.path)
                if real not in visited:  # symlink loops and duplicate links are walked once
                    visited.add(real)
                    walk(entry.path, rel_path)
            elif kind == "file":
                images.append(SourceImage(rel_path, entry.path))  # a str: no Path per image

    walk(str(input_dir), "")
    return images, errors


def read_image_list(input_dir: Path, list_file: Path) -> tuple[list[SourceImage], list[DiscoveryError]]:
    """Sources named in `list_file` (relative to input_dir or absolute inside it)."""
    root = os.path.realpath(input_dir)
    images: list[SourceImage] = []
    errors: list[DiscoveryError] = []
    try:
        lines = list_file.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ConfigError(f"cannot read image list {list_file}: {exc}") from exc
    for raw in lines:
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        candidate = Path(line) if os.path.isabs(line) else Path(input_dir) / line
        lexical = os.path.normpath(os.path.abspath(candidate))
        # An absolute line may spell the input dir as given or as its resolved path.
        base = next((b for b in (os.path.normpath(os.path.abspath(input_dir)), root) if _inside(lexical, b)), None)
        if base is None or not _inside(os.path.realpath(candidate), root):
            errors.append(DiscoveryError(line, "outside_input", "listed path is outside the input directory"))
            continue
        if not is_image_name(line):
            errors.append(DiscoveryError(line, "not_an_image", "listed path is not an image file"))
            continue
        if not os.path.isfile(candidate):
            errors.append(DiscoveryError(line, "not_found", "listed file does not exist"))
            continue
        rel = PurePosixPath(*Path(os.path.relpath(lexical, base)).parts)
        if any(part.startswith(".") for part in rel.parts):
            # Its output would live in a hidden folder, which status, verify and publish never walk.
            errors.append(DiscoveryError(line, "hidden", "hidden paths (a name starting with '.') are not processed"))
            continue
        images.append(SourceImage(str(rel), Path(lexical)))
    return images, errors


def split_collisions(images: Iterable[SourceImage]) -> tuple[list[SourceImage], list[DiscoveryError]]:
    """Sort by relative path, drop duplicates, and report every source of an ambiguous id."""
    by_id: dict[str, list[SourceImage]] = defaultdict(list)
    for image in sorted(set(images), key=_by_rel_path):
        by_id[image.image_id].append(image)
    kept: list[SourceImage] = []
    errors: list[DiscoveryError] = []
    for image_id, group in by_id.items():
        if (artifact := _artifact_component(image_id)) is not None:
            errors.extend(DiscoveryError(g.rel_path, "id_collision",
                                         f"image id {image_id!r} would put a folder where an image's "
                                         f"{artifact} lives") for g in group)
            continue
        if len(group) == 1:
            kept.append(group[0])
            continue
        names = ", ".join(g.rel_path for g in group)
        errors.extend(DiscoveryError(g.rel_path, "id_collision", f"image id {image_id!r} is shared by: {names}")
                      for g in group)
    kept.sort(key=_by_rel_path)
    return kept, errors


def _artifact_component(image_id: str) -> str | None:
    """The artifact file name among the id's folders (`a/pixel.npy` from `a/pixel.npy.png`), if any:
    that output folder would be another image's artifact path."""
    return next((part for part in image_id.split("/")[1:] if part in BY_FILENAME), None)


def _by_rel_path(image: SourceImage) -> str:
    return image.rel_path  # a plain key sorts ~3x faster than the dataclass's tuple comparison


def parse_shard(spec: str) -> tuple[int, int]:
    """`"2/8"` → (2, 8), checking 0 ≤ N < M."""
    try:
        index, count = (int(x) for x in spec.split("/"))
    except ValueError as exc:
        raise ConfigError(f"--shard must look like N/M, got {spec!r}") from exc
    if count < 1 or not 0 <= index < count:
        raise ConfigError(f"--shard N/M needs 0 <= N < M, got {spec!r}")
    return index, count


def select_shard(images: list[SourceImage], index: int, count: int) -> list[SourceImage]:
    """Positions index, index+count, … of the sorted list."""
    return images[index::count]


def discover(input_dir: Path, image_list: Path | None = None, shard: str | None = None) -> Discovery:
    """The sorted, collision-free sources of a run, plus everything that was refused."""
    input_dir = Path(input_dir)
    if not input_dir.is_dir():
        raise ConfigError(f"input directory does not exist: {input_dir}")
    found, errors = read_image_list(input_dir, image_list) if image_list else scan(input_dir)
    images, collisions = split_collisions(found)
    if shard:
        images = select_shard(images, *parse_shard(shard))
    return Discovery(images, errors + collisions)


def _second(pair: tuple[str, str]) -> str:
    return pair[1]


def _own_file_names() -> frozenset[str]:
    """Every file name stratum itself writes in an image directory: artifacts, failure records, the
    provenance record."""
    from stratum_core.artifacts import pass_names
    from stratum_core.provenance import RECORD_NAME

    return frozenset(BY_FILENAME) | {f"{FAILURE_PREFIX}{p}.json" for p in pass_names()} | {RECORD_NAME}


def iter_image_dirs(output_dir: Path) -> Iterator[tuple[str, set[str]]]:
    """Yield (image_id, file names) for every image directory under `output_dir`.

    An image directory is one holding `metadata.json`, a failure record or any artifact (one
    whose metadata.json was deleted, say). One listing per directory, so this costs no more
    than a bare `os.scandir` walk: a directory holding only names stratum writes is an image
    directory with nothing below it, listed by name (`os.listdir`); any other is scanned again
    with `os.scandir` to tell its files from its folders.
    """
    own = _OWN_FILE_NAMES
    # An explicit stack, not recursive generators: a `yield from` chain costs per image and per level,
    # and status walks millions of image directories. Same order: depth first, folders sorted by name.
    stack: list[tuple[str, str]] = [(str(output_dir), "")]
    pop, push = stack.pop, stack.extend
    while stack:
        directory, rel = pop()
        try:
            listed = os.listdir(directory)
        except OSError:
            continue
        if rel and own.issuperset(listed):  # the common case: no per-entry objects, no file types
            names = set(listed)
            if _is_image_dir(names):
                yield rel, names
            continue
        try:
            with os.scandir(directory) as it:
                entries = list(it)
        except OSError:
            continue
        names = {e.name for e in entries if not e.is_dir(follow_symlinks=False)}
        subdirs = [e for e in entries if e.is_dir(follow_symlinks=False) and not e.name.startswith(".")] \
            if len(names) < len(entries) else ()
        if rel and _is_image_dir(names):
            yield rel, names
        if subdirs:
            prefix = f"{rel}/" if rel else ""
            # popped last-first: visited in name order
            push(sorted(((sub.path, prefix + sub.name) for sub in subdirs), key=_second, reverse=True))


def _is_image_dir(names: set[str]) -> bool:
    return not names.isdisjoint(BY_FILENAME) or any(n.startswith(FAILURE_PREFIX) for n in names)


_OWN_FILE_NAMES = _own_file_names()
