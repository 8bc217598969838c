"""Provenance and staleness: what produced every artifact, and which artifacts went stale.

One small JSON file per image, `<image dir>/.provenance.json`, holds the source fingerprint and,
per pass, the *key* that decides staleness (pass version, model id, exact weights, precision;
server, model and prompt hash for captions) plus what is only informative (device, time, run,
file sizes). It is written by the engine's writer right after a pass's artifacts, atomically
(temp file + rename) under an flock of the image directory, so concurrent runs on one image
never lose each other's entries. Before a pass is (re)computed, planning marks its entry
`pending`: a run killed between the artifacts and the record leaves a pending entry, which
counts as stale, never new artifacts under an old run's record.

Staleness is read from the filesystem only: an artifact is stale when its entry's key differs
from the current configuration's (`.stratum/provenance-current.json`, written by each
`process` run for its passes), when its source file changed (size or mtime differs from the
fingerprint), when an upstream artifact it was computed from was rewritten since (t5 from an
older caption, depth/normal from an older seg) or is itself stale. Artifacts without an entry
(datasets from before provenance) are "unknown provenance": counted, never stale.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import secrets
import threading
import time
import weakref
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

from stratum_core import __version__
from stratum_core.artifacts import BY_FILENAME, pass_files
from stratum_core.store import DISK_FULL_ERRNOS, Store, write_atomic

log = logging.getLogger("stratum.provenance")

RECORD_NAME = ".provenance.json"
CURRENT_NAME = "provenance-current.json"  # under <output>/.stratum/
WEIGHT_HASHES_NAME = "weight-hashes.json"  # under <output>/.stratum/: content hashes by (path, size, mtime)
FORMAT = 1
_INDEX = 2  # the index lines' version (`#2`: three lines; `#1` records, two lines, are still read)
REDO_MODES = ("none", "stale", "all")
_HASH_CHUNK = 1 << 20

# Which key field changed → the reason status prints.
_KEY_REASONS = {"version": "pass version changed", "model": "model changed", "weights": "model revision changed",
                "precision": "precision changed", "backend": "caption server changed",
                "url": "caption server changed", "prompt_sha256": "caption prompt changed"}
INTERRUPTED = "recomputation did not finish"
NO_RECORD = "no provenance record (run interrupted)"
SOURCE_CHANGED = "source changed"


# ---------------------------------------------------------------------- source fingerprint
def source_fingerprint(path: Path, read: Any = None) -> dict[str, Any]:
    """Size, mtime and sha256 of a source file, plus the stratum version (goes into metadata.json).

    `read` is the intake's `SourceRead` (what it hashed while reading the bytes it decoded), so the
    source is read once; without it (an item built from metadata.json, no decode) the file is read here.
    """
    if read is None:
        from stratum_core.intake import read_source

        _, read = read_source(Path(path))
    return {"path": str(Path(path).absolute()), "size": read.size, "mtime_ns": read.mtime_ns,
            "sha256": read.sha256, "stratum_version": __version__}


def source_changed(fingerprint: Mapping[str, Any]) -> bool | None:
    """True when the source's size or mtime differs from `fingerprint`; None when it is gone."""
    try:
        st = os.stat(fingerprint["path"])
    except (OSError, KeyError, TypeError):
        return None
    return st.st_size != fingerprint.get("size") or st.st_mtime_ns != fingerprint.get("mtime_ns")


# ---------------------------------------------------------------------- weights and keys
def weights_id(location: Any, state_dir: Path | None = None) -> str:
    """The exact weights of a resolved model: the HF commit where the cache or a `local_dir` download
    records it, else a sha256 of the weight files (cached by path, size and mtime in `state_dir`)."""
    root = Path(location.root)
    if root.parent.name == "snapshots":  # HF cache: .../models--org--name/snapshots/<commit>/
        return f"rev:{root.name}"
    files = _weight_files(location)
    for name in files:  # `hf download --local-dir` leaves .cache/huggingface/download/<file>.metadata
        meta = root / ".cache" / "huggingface" / "download" / f"{name}.metadata"
        with contextlib.suppress(OSError, IndexError):
            commit = meta.read_text().splitlines()[0].strip()
            if commit:
                return f"rev:{commit}"
    return "sha256:" + _hash_files(root, files, state_dir)


def _weight_files(location: Any) -> list[str]:
    root = Path(location.root)
    if location.spec.files:
        return sorted(location.spec.files)
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")
                  if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts))


_hash_lock = threading.Lock()
_hash_memo: dict[str, str] = {}
MODEL_CACHE_NAME = ".cache/stratum/weight-hashes.json"  # beside the weights: shared by every output dir


def _hash_files(root: Path, files: Sequence[str], state_dir: Path | None) -> str:
    """sha256 over the files' names and contents; each file hashed once per (path, size, mtime).

    The digests are kept beside the weights (`<model dir>/.cache/stratum/weight-hashes.json`, so a run
    into any output reuses them) and in the output's `.stratum/weight-hashes.json` (for a read-only model
    dir); both written atomically, best effort. A touched or replaced file has another key: hashed again.
    """
    caches = [root / MODEL_CACHE_NAME] + ([Path(state_dir) / WEIGHT_HASHES_NAME] if state_dir else [])
    with _hash_lock:
        known: dict[str, str] = {}
        for cache_path in caches:
            cached = _read_json(cache_path)
            if isinstance(cached, dict):
                known.update({k: v for k, v in cached.items() if isinstance(v, str)})
        combined, used = hashlib.sha256(), {}
        for name in files:
            path = root / name
            st = path.stat()
            stamp = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"
            digest = _hash_memo.get(stamp) or known.get(stamp)
            if digest is None:
                digest = _hash_file(path)
            _hash_memo[stamp] = used[stamp] = digest
            combined.update(f"{name}\0{digest}\0".encode())
        for cache_path in caches:
            cached = _read_json(cache_path)
            cached = cached if isinstance(cached, dict) else {}
            if any(cached.get(k) != v for k, v in used.items()):
                with contextlib.suppress(OSError):
                    cache_path.parent.mkdir(parents=True, exist_ok=True)
                    write_atomic(cache_path, json.dumps({**cached, **used}, indent=0).encode())
        return combined.hexdigest()


def _hash_file(path: Path) -> str:
    """The sha256 of one weight file (gigabytes for a real model: hence the caches above)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_HASH_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def pass_key(p: Any, location: Any = None, state_dir: Path | None = None) -> dict[str, Any]:
    """What must match for `p`'s artifacts to count as current (see the module docstring)."""
    key: dict[str, Any] = {"version": str(p.version)}
    if p.model is not None:
        key["model"] = location.spec.hub_id if location is not None else p.model.hub_id
        key["weights"] = weights_id(location, state_dir) if location is not None else None
    if p.uses_torch:
        key["precision"] = requested_precision(p)
    if p.io_bound:  # a server-bound pass (caption): what the server was asked
        info = p.provenance()
        key.update({k: info.get(k) for k in ("backend", "url", "model") if k in info})
        if info.get("prompt") is not None:
            key["prompt_sha256"] = hashlib.sha256(str(info["prompt"]).encode()).hexdigest()
    return key


def requested_precision(p: Any) -> str:
    """The precision asked for (per pass where the pass has its own), not what a model fell back to."""
    own = getattr(p, "requested_precision", None)
    return own if isinstance(own, str) else p.options.resolved_precision


def expected_key(p: Any, state_dir: Path | None = None) -> dict[str, Any] | None:
    """The key the current configuration would record for `p`, without loading anything (None: the
    weights are not available locally, so nothing can be called stale against them)."""
    if p.model is None:
        return pass_key(p)
    from stratum_core.errors import StratumError
    from stratum_core.models import resolve_model

    try:
        location = resolve_model(p.model, explicit=p.options.model_paths.get(p.name),
                                 model_dir=p.options.model_dir, offline=True)
        return pass_key(p, location, state_dir)
    except (StratumError, OSError) as exc:
        log.debug("provenance: cannot resolve %s's weights now (%s)", p.name, exc)
        return None


_actual_keys: "weakref.WeakKeyDictionary[Any, dict]" = weakref.WeakKeyDictionary()
_keys_lock = threading.Lock()


def _actual_key(p: Any, state_dir: Path) -> dict[str, Any]:
    """The key of a loaded pass (from the weights it really loaded), computed once per run."""
    with _keys_lock:
        key = _actual_keys.get(p)
        if key is None:
            key = pass_key(p, p.weights, state_dir) if p.model is not None and p.weights is not None \
                else (expected_key(p, state_dir) or pass_key(p))
            _actual_keys[p] = key
        return key


def upstream_of(p: Any) -> list[str]:
    """Passes whose artifacts `p` reads (t5 → caption; depth, normal → seg), from its `reads`."""
    from stratum_core.artifacts import BY_NAME

    return list(dict.fromkeys(BY_NAME[n].pass_name for n in p.reads if n in BY_NAME))


# ---------------------------------------------------------------------- the per-image record
def _read_json(path: Path) -> Any:
    try:
        with open(path, "rb") as f:
            return json.loads(f.read())
    except (OSError, ValueError):
        return None


def _read_raw(store: Store, image_id: str) -> bytes | None:
    return _read_path(f"{store._image_dir_str(image_id)}/{RECORD_NAME}")


def _read_path(path: str) -> bytes | None:
    # String paths and raw reads: status calls this once per image of a dataset of millions.
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        data = os.read(fd, 1 << 16)  # a record is well under 64 KiB: one read
        if len(data) == 1 << 16:
            data += b"".join(iter(lambda: os.read(fd, 1 << 16), b""))
        return data
    except OSError:
        return None
    finally:
        os.close(fd)


def _parse_record(data: bytes | None) -> dict | None:
    """The JSON body (after the index lines, see `_index_lines`: two in a `#1` record, three in `#2`)."""
    if not data:
        return None
    try:
        record = json.loads(data if data[:1] == b"{" else data.split(b"\n", 3 if data[:2] == b"#2" else 2)[-1])
    except (ValueError, IndexError):
        return None
    return record if isinstance(record, dict) and isinstance(record.get("passes"), dict) else None


def read_record(store: Store, image_id: str) -> dict | None:
    """The image's provenance record, or None (none yet, or unreadable: both mean unknown provenance)."""
    return _parse_record(_read_raw(store, image_id))


def key_id(key: Mapping[str, Any] | None) -> str:
    """A short digest of a key: status compares these, and reads a full key only to say why it differs."""
    if key is None:
        return "-"
    return hashlib.sha1(json.dumps(key, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]


def _entry_states(record: Mapping[str, Any]) -> dict[str, tuple[str, str, tuple[str, ...]]]:
    """pass → (key id, state, upstream passes) — everything staleness needs besides the current keys and
    the source's stat. state: `p` pending, `-` no key, `s` computed from another source, `u.<up>` the
    upstream entry was rewritten since, `k` consistent. The record is rewritten whenever any entry changes,
    so these verdicts, derived from the whole record at write time, stay true until the next write."""
    passes = record.get("passes") or {}
    source_sha = (record.get("source") or {}).get("sha256")
    states = {}
    for name, entry in passes.items():
        if not isinstance(entry, dict):
            continue
        inputs = entry.get("inputs") or {}
        if entry.get("pending"):
            state = "p"
        elif "key" not in entry:
            state = "-"
        elif source_sha and entry.get("source_sha256") not in (None, source_sha):
            state = "s"
        else:
            changed = [u for u, stamp in inputs.items() if stamp != (passes.get(u) or {}).get("stamp")]
            state = f"u.{changed[0]}" if changed else "k"
        states[name] = (key_id(entry.get("key")), state, tuple(inputs))
    return states


def _index_lines(record: Mapping[str, Any]) -> str:
    """Three text lines before the JSON with just what staleness needs, parsed without a JSON decoder:
    `#2 <size> <mtime_ns> <sha256>\t<source path>`; per pass, `name:keyid:state:up,…`; per upstream file a
    pass read, `name:<file>:<size>:<mtime_ns>` (t5's caption.txt as it was when t5 was computed). The second
    line holds no per-image values, so status decides it once for all the images that share it."""
    source = record.get("source") or {}
    path = str(source.get("path", "")).replace("\\", "\\\\").replace("\n", "\\n")
    first = f"#{_INDEX} {source.get('size', '-')} {source.get('mtime_ns', '-')} {source.get('sha256') or '-'}\t{path}"
    tokens = [f"{name}:{kid}:{state}:{','.join(ups)}" for name, (kid, state, ups) in _entry_states(record).items()]
    inputs = [f"{name}:{filename}:{size}:{mtime_ns}" for name, entry in (record.get("passes") or {}).items()
              if isinstance(entry, dict) and not entry.get("pending")
              for filename, (size, mtime_ns) in (entry.get("input_files") or {}).items()]
    return first + "\n" + " ".join(tokens) + "\n" + " ".join(inputs) + "\n"


def changed_inputs(directory: str | Path, rec: Mapping[str, Any] | None) -> dict[str, str]:
    """pass → upstream pass whose file (as the pass read it, `input_files`) differs now: a hand-edited
    caption.txt makes t5 stale. One stat per recorded input file."""
    return _changed_files(directory, ((name, filename, _stamp_text(recorded))
                                      for name, entry in ((rec or {}).get("passes") or {}).items()
                                      if isinstance(entry, dict) and not entry.get("pending")
                                      for filename, recorded in (entry.get("input_files") or {}).items()))


def _stamp_text(recorded: Any) -> str:
    """A record's `[size, mtime_ns]` as the index line writes it; anything else matches no file."""
    return ":".join(map(str, recorded)) if isinstance(recorded, list) else "?"


def _changed_files(directory: str | Path, recorded: Iterable[tuple[str, str, str]]) -> dict[str, str]:
    """pass → upstream pass, for each (pass, file, `size:mtime_ns` when the pass read it) whose file differs
    now; one stat per file (seg.npy, read by depth and normal, is looked at once). Stamps are compared as
    text: status reads them from the index line and never parses the numbers."""
    changed: dict[str, str] = {}
    stamps: dict[str, str] = {}
    for name, filename, stamp_then in recorded:
        stamp_now = stamps.get(filename)
        if stamp_now is None:
            try:
                st = os.stat(f"{directory}/{filename}")
                stamp_now = stamps[filename] = "%d:%d" % (st.st_size, st.st_mtime_ns)
            except OSError:
                stamp_now = stamps[filename] = ""  # gone: differs from any recorded stamp
        if stamp_now != stamp_then and filename in _PASS_OF_FILE:
            changed.setdefault(name, _PASS_OF_FILE[filename])
    return changed


def _file_stamp(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """An exclusive flock on the image directory: read-modify-write of the record is atomic across
    processes (concurrent runs of different passes over one shard, e.g. Dagster's per-pass jobs)."""
    try:
        import fcntl
    except ImportError:  # no flock here: single-run safety only (documented)
        yield
        return
    directory.mkdir(parents=True, exist_ok=True)
    fd = os.open(directory, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _update(store: Store, image_id: str, change) -> None:
    """Apply `change(record)` to the image's record under the lock and write it atomically."""
    directory = store.image_dir(image_id)
    with _locked(directory):
        record = read_record(store, image_id) or {"format": FORMAT, "passes": {}}
        change(record)
        write_atomic(directory / RECORD_NAME, encode_record(record))


def encode_record(record: Mapping[str, Any]) -> bytes:
    """The record file's bytes: the index lines, then the JSON."""
    return (_index_lines(record) + json.dumps(record, separators=(",", ":"))).encode()


def record(store: Store, image_id: str, p: Any, outcome: Any) -> None:
    """The writer's hook: `p`'s artifacts of `image_id` were just written; record what produced them.

    Best effort: a failure to write the record is logged, and the entry stays `pending` (stale),
    so the artifacts are redone by `--redo stale` rather than trusted under an old record.
    """
    try:
        key = _actual_key(p, store.state_dir)
        files = {}
        for artifact in p.artifacts:
            st = os.stat(store.path(image_id, artifact))
            files[artifact.filename] = [st.st_size, st.st_mtime_ns]
        info = p.provenance()
        entry = {"key": key, "stamp": secrets.token_hex(8), "time": time.time(), "stratum_version": __version__,
                 "device": info.get("device", getattr(p.options, "device", "")).split(":")[0],
                 "precision_used": info.get("precision"), "files": files}
        if getattr(p, "weights", None) is not None:
            entry["weights_path"] = str(p.weights.root)
        input_files = _input_files(store, image_id, p)

        def change(rec: dict) -> None:
            if p.name == "metadata":
                fingerprint = (outcome.values.get("metadata") or {}).get("source")
                if fingerprint:
                    rec["source"] = fingerprint
                for other in rec["passes"].values():  # written in this run before the metadata (other lane)
                    if isinstance(other, dict) and other.pop("awaits_source", False):
                        other["source_sha256"] = (rec.get("source") or {}).get("sha256")
            if p.name != "metadata" and (rec["passes"].get("metadata") or {}).get("pending"):
                entry["awaits_source"] = True  # the metadata of the source it read is still to come
            entry["source_sha256"] = (rec.get("source") or {}).get("sha256")
            entry["inputs"] = {u: rec["passes"][u].get("stamp") for u in upstream_of(p)
                               if u in rec["passes"]}
            if input_files:
                entry["input_files"] = input_files
            rec["passes"][p.name] = entry

        _update(store, image_id, change)
    except OSError as exc:
        if exc.errno in DISK_FULL_ERRNOS:
            raise  # the caller stops the run and says so once; the entry stays pending (stale)
        log.warning("provenance of %s [%s] not recorded: %s", image_id, p.name, exc)
    except Exception as exc:  # never lose the artifacts over their record: the entry stays pending (stale)
        log.warning("provenance of %s [%s] not recorded: %s", image_id, p.name, exc)


def _input_files(store: Store, image_id: str, p: Any) -> dict[str, list[int]]:
    """(size, mtime_ns) of the upstream files `p` read (its `reads`): a later edit of one makes `p` stale.
    Recorded after `p`'s artifacts, so they are the files it was computed from (the writer wrote them first)."""
    from stratum_core.artifacts import BY_NAME

    files = {}
    for need in p.reads:
        artifact = BY_NAME.get(need)
        if artifact is not None and artifact.pass_name != p.name:
            stamp = _file_stamp(f"{store._image_dir_str(image_id)}/{artifact.filename}")
            if stamp is not None:
                files[artifact.filename] = list(stamp)
    return files


def mark_pending(store: Store, image_id: str, pass_names: Iterable[str]) -> None:
    """Before passes are (re)computed: their entries say `pending` until the writer records them."""
    names = list(pass_names)

    def change(rec: dict) -> None:
        for name in names:
            rec["passes"][name] = {**rec["passes"].get(name, {}), "pending": True}

    try:
        _update(store, image_id, change)
    except OSError as exc:  # on a full disk the artifact writes fail too, and the engine says so once
        level = logging.DEBUG if exc.errno in DISK_FULL_ERRNOS else logging.WARNING
        log.log(level, "provenance of %s: cannot mark %s pending: %s", image_id, ", ".join(names), exc)


# ---------------------------------------------------------------------- staleness
def key_reason(recorded: Mapping[str, Any] | None, expected: Mapping[str, Any]) -> str | None:
    """Why a recorded key is not the expected one (None: it is)."""
    recorded = recorded or {}
    for name, value in expected.items():
        if recorded.get(name) != value:
            return _KEY_REASONS.get(name, f"{name} changed")
    return None


def stale_reasons(rec: Mapping[str, Any] | None, names: set[str] | frozenset[str],
                  expected: Mapping[str, Mapping[str, Any] | None], passes: Iterable[str],
                  source_status: bool | None = None,
                  inputs_changed: Mapping[str, str] | None = None) -> tuple[dict[str, str], set[str]]:
    """({pass: why stale}, passes of unknown provenance) among `passes` whose files are all in `names`.

    `source_status` is `source_changed(rec["source"])`, given by the caller so it is computed once;
    `inputs_changed` is `changed_inputs(image dir, rec)` (upstream files edited since a pass read them).
    """
    rec = rec or {"passes": {}}
    ids = {n: key_id(k) for n, k in expected.items() if k is not None}

    def why(name: str) -> str:
        return key_reason(rec["passes"][name].get("key"), expected[name]) or "key changed"

    has_source = bool((rec.get("source") or {}).get("sha256"))
    return _verdict(_entry_states(rec), has_source, names, ids, passes, source_status, why, inputs_changed)


def _verdict(entries: Mapping[str, tuple], has_source: bool, names: set[str] | frozenset[str],
             expected_ids: Mapping[str, str], passes: Iterable[str], source_status: bool | None,
             why, inputs_changed: Mapping[str, str] | None = None) -> tuple[dict[str, str], set[str]]:
    """The staleness rules over `_entry_states`; `why(pass)` says which key field changed (called only
    for a key id that differs, so status never decodes a full key of a current image)."""
    stale: dict[str, str] = {}
    unknown: set[str] = set()
    files_of = _FILES_OF
    for name in passes:  # dependency order: an upstream's verdict is known before its downstream's
        files = files_of.get(name)
        if files is None:
            files = files_of[name] = pass_files(name)
        if not files <= names:
            continue
        entry = entries.get(name)
        if entry is None or entry[1] == "-":
            if has_source:  # metadata came with provenance, so this pass's record was lost mid-write
                stale[name] = NO_RECORD
            else:
                unknown.add(name)
            continue
        kid, state, ups = entry
        want = expected_ids.get(name)
        if state == "p":
            reason = INTERRUPTED
        elif source_status or state == "s":
            reason = SOURCE_CHANGED
        elif want is not None and kid != want:
            reason = why(name)
        else:
            reason = next((f"{up} is stale" for up in ups if up in stale), None)
            if reason is None and state != "k":
                reason = f"{state[2:]} changed"
            if reason is None and inputs_changed and name in inputs_changed:
                reason = f"{inputs_changed[name]} changed"  # e.g. caption.txt edited by hand since t5 read it
        if reason is not None:
            stale[name] = reason
    return stale, unknown


def _fast_verdict(data: bytes, names: set[str], expected: Mapping[str, Mapping[str, Any]],
                  expected_ids: Mapping[str, str], passes: Sequence[str],
                  cache: dict | None = None, directory: str | None = None
                  ) -> tuple[dict[str, str], set[str], bool | None]:
    """Status's per-image check from the index lines: (stale, unknown, source changed). `cache` maps
    (second line, source changed, has a source, file names, edited inputs) to a verdict: images that share
    them share it. `directory` (the image's folder) is where recorded input files are checked."""
    first_end = data.find(b"\n")
    second_end = data.find(b"\n", first_end + 1)
    if data[:1] != b"#" or second_end < 0:  # no index lines (written by hand or by a future format): slow path
        rec = _parse_record(data)
        changed = source_changed(rec["source"]) if rec and rec.get("source") else None
        edited = changed_inputs(directory, rec) if directory is not None else None
        return (*stale_reasons(rec, names, expected, passes, changed, edited), changed)
    # Per image (millions): a few byte operations, the source's stat, one dict lookup; no decode, no split.
    tab = data.find(b"\t", 0, first_end)
    has_source = data[tab - 1] != 45  # the sha256 field is "-": written without a source fingerprint
    changed = None
    if has_source:
        path = data[tab + 1:first_end]
        if b"\\" in path:
            path = path.replace(b"\\n", b"\n").replace(b"\\\\", b"\\")
        try:
            st = os.stat(path)  # a bytes path: no decode
        except OSError:
            pass
        else:  # "#N <size> <mtime_ns> <sha256>": compare the text, not parsed numbers
            changed = not data.startswith(b"%d %d " % (st.st_size, st.st_mtime_ns), 3)
    second = data[first_end + 1:second_end]
    edited: Any = ()
    # After the second line: "\n" (an empty third line), "{" (a #1 record's JSON) or input-file tokens.
    if directory is not None and data[second_end + 1] not in (10, 123):
        third_end = data.find(b"\n", second_end + 1)
        changed_files = _edited_inputs(directory, data[second_end + 1:third_end])
        if changed_files:
            edited = tuple(sorted(changed_files.items()))
    if cache is not None:
        cache_key = (second, names, changed, has_source, edited)
        verdict = cache.get(cache_key)
        if verdict is not None:
            return verdict[0], verdict[1], changed
    entries = {}
    for token in second.decode().split():
        name, kid, state, ups = token.split(":", 3)
        entries[name] = (kid, state, tuple(ups.split(",")) if ups else ())
    verdict = _verdict(entries, has_source, names, expected_ids, passes, changed, _KeyReason(data, expected),
                       dict(edited))
    if cache is not None and len(cache) < 4096:
        cache[cache_key] = verdict
    return (*verdict, changed)


def _edited_inputs(directory: str, line: bytes) -> dict[str, str]:
    """pass → upstream pass, from the third index line's `name:<file>:<size>:<mtime_ns>` tokens: the files
    that differ now from when the pass read them."""
    return _changed_files(directory, (token.split(":", 2) for token in line.decode().split()))


class _KeyReason:
    """Which key field changed, from the record's JSON: decoded only when a key id differs."""

    __slots__ = ("data", "expected")

    def __init__(self, data: bytes, expected: Mapping[str, Any]):
        self.data, self.expected = data, expected

    def __call__(self, name: str) -> str:
        rec = _parse_record(self.data)
        return key_reason(rec["passes"][name].get("key"), self.expected[name]) or "key changed"


_FILES_OF: dict[str, frozenset[str]] = {}  # pass → its file names (a plain dict: no call per pass per image)
_PASS_OF_FILE = {filename: artifact.pass_name for filename, artifact in BY_FILENAME.items()}


# ---------------------------------------------------------------------- the current configuration
def read_current(state_dir: Path) -> dict[str, dict]:
    """pass → the key the latest `process` run of that pass expected (`.stratum/provenance-current.json`)."""
    current = _read_json(Path(state_dir) / CURRENT_NAME)
    return current if isinstance(current, dict) else {}


def write_current(state_dir: Path, keys: Mapping[str, Mapping[str, Any] | None]) -> None:
    """Merge this run's expected keys into the current configuration (passes it could not resolve keep theirs)."""
    state_dir = Path(state_dir)
    known = {name: key for name, key in keys.items() if key is not None}
    if not known:
        return
    state_dir.mkdir(parents=True, exist_ok=True)
    with _locked(state_dir):
        current = read_current(state_dir)
        if all(current.get(n) == k for n, k in known.items()):
            return
        current.update(known)
        write_atomic(state_dir / CURRENT_NAME, json.dumps(current, indent=1, sort_keys=True).encode())


# ---------------------------------------------------------------------- planning (engine hook)
@dataclass
class _PlanState:
    redo: str
    expected: dict[str, dict | None]
    names: tuple[str, ...]
    downstream: dict[str, list[str]]


_plan_states: "weakref.WeakKeyDictionary[Any, _PlanState]" = weakref.WeakKeyDictionary()
_plan_lock = threading.Lock()


def _plan_state(engine: Any) -> _PlanState:
    state = _plan_states.get(engine)
    if state is None:
        with _plan_lock:
            state = _plan_states.get(engine)
            if state is None:
                redo = getattr(engine.config, "redo", "none") or "none"
                expected = {p.name: expected_key(p, engine.store.state_dir) for p in engine.passes}
                with contextlib.suppress(OSError):
                    write_current(engine.store.state_dir, expected)
                names = tuple(p.name for p in engine.passes)
                downstream: dict[str, list[str]] = defaultdict(list)
                for p in engine.passes:  # (from the passes' own `reads`: no pass module is imported here)
                    for up in upstream_of(p):
                        downstream[up].append(p.name)
                state = _PlanState(redo, expected, names, dict(downstream))
                _plan_states[engine] = state
    return state


def plan(engine: Any, source: Any, on_disk: frozenset[str], todo: tuple) -> tuple:
    """`Engine.plan`'s hook: with `--redo stale` add the stale passes (and their downstream) to `todo`,
    with `--redo all` every pass; then mark what will run `pending` in the record."""
    state = _plan_state(engine)
    if RECORD_NAME not in on_disk:  # no record yet: nothing recorded can be trusted wrongly
        return tuple(engine.passes) if state.redo == "all" else todo
    if not todo and state.redo == "none":
        return todo  # the common no-op re-run: one dict lookup, no read
    rec = read_record(engine.store, source.image_id)
    if state.redo == "all":
        todo = tuple(engine.passes)
    elif state.redo == "stale":
        if rec is not None:
            changed = source_changed(rec["source"]) if rec.get("source") else None
            stale, _ = stale_reasons(rec, on_disk, state.expected, state.names, changed,
                                     changed_inputs(engine.store.image_dir(source.image_id), rec))
            wanted = set(stale) | {p.name for p in todo}
            for name in state.names:  # downstream of anything that runs again (dependency order)
                if name in wanted:
                    wanted.update(state.downstream.get(name, ()))
            todo = tuple(p for p in engine.passes if p.name in wanted)
    recorded = [p.name for p in todo if rec is not None and p.name in rec["passes"]]
    if recorded:  # their old entries must not describe the files this run is about to write
        mark_pending(engine.store, source.image_id, recorded)
    return todo


# ---------------------------------------------------------------------- status
@dataclass
class ProvenanceStatus:
    """Stale and unknown-provenance counts per pass, accumulated during status's one walk."""

    stale: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))  # pass → reason → images
    unknown: Counter = field(default_factory=Counter)  # pass → images with no provenance entry
    sources_changed: int = 0
    sources_missing: int = 0
    stale_images: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))  # ≤ MAX_LISTED per pass
    _current: dict | None = None
    _ids: dict = field(default_factory=dict)
    _verdicts: dict = field(default_factory=dict)  # see _fast_verdict
    _passes: tuple[str, ...] = ()

    MAX_LISTED = 1000

    def add(self, store: Store, image_id: str, names: set[str] | frozenset[str], directory: str | None = None
            ) -> None:
        """One image directory (called from status's walk; reads one small file). `directory` is the
        image's folder when the caller has it (status's walk), which spares re-checking the id; `names`
        as a frozenset spares a copy (images with the same files share a cached verdict)."""
        if self._current is None:
            from stratum_core.artifacts import pass_names

            self._current, self._passes = read_current(store.state_dir), pass_names()
            self._ids = {n: key_id(k) for n, k in self._current.items()}
        if RECORD_NAME not in names:
            for name in self._passes:
                if pass_files(name) <= names:
                    self.unknown[name] += 1
            return
        if directory is None:
            directory = store._image_dir_str(image_id)
        data = _read_path(f"{directory}/{RECORD_NAME}") or b""
        try:
            stale, unknown, changed = _fast_verdict(data, frozenset(names), self._current, self._ids, self._passes,
                                                    self._verdicts, directory)
        except (ValueError, UnicodeDecodeError):  # a damaged record: its artifacts' provenance is unknown
            stale, unknown, changed = {}, {n for n in self._passes if pass_files(n) <= names}, None
        if changed:
            self.sources_changed += 1
        elif changed is None and data and data[2:5] != b" - ":  # a fingerprint whose source is gone
            self.sources_missing += 1
        for name in unknown:
            self.unknown[name] += 1
        for name, reason in stale.items():
            self.stale[name][reason] += 1
            if len(self.stale_images[name]) < self.MAX_LISTED:
                self.stale_images[name].append(image_id)

    def to_dict(self) -> dict:
        return {"stale": {p: dict(c) for p, c in self.stale.items()},
                "stale_images": {p: list(ids) for p, ids in self.stale_images.items()},
                "unknown_provenance": dict(self.unknown), "sources_changed": self.sources_changed,
                "sources_missing": self.sources_missing}

    def format_lines(self) -> list[str]:
        lines = []
        if self.stale:
            lines.append("Stale (`stratum process --redo stale` recomputes them and their downstream):")
            for name in self._passes:
                if name in self.stale:
                    reasons = self.stale[name]
                    detail = ", ".join(f"{r} {n:,}" if len(reasons) > 1 else r for r, n in reasons.most_common())
                    lines.append(f"  {name}: {sum(reasons.values()):,} stale ({detail})")
        if self.sources_changed:
            lines.append(f"{self.sources_changed:,} source{'s' if self.sources_changed > 1 else ''} changed")
        if self.sources_missing:
            lines.append(f"{self.sources_missing:,} sources not found where they were read (moved?)")
        if self.unknown:
            lines.append("Unknown provenance (written before provenance records; never called stale): "
                         + ", ".join(f"{n} {self.unknown[n]:,}" for n in self._passes if self.unknown[n]))
        return lines


def image_staleness(output_dir: Path, image_ids: Iterable[str]) -> ProvenanceStatus:
    """Stale and unknown counts over some images (a shard), as `status` computes them for the dataset."""
    store, status = Store(output_dir), ProvenanceStatus()
    for image_id in image_ids:
        status.add(store, image_id, store.listing(image_id))
    return status


# ---------------------------------------------------------------------- verify
def check_record(store: Store, image_id: str, names: set[str]) -> list[tuple[str, str]]:
    """(file name, problem) where the image's provenance record contradicts its files."""
    if RECORD_NAME not in names:
        return []
    rec = read_record(store, image_id)
    if rec is None:
        return [(RECORD_NAME, "unreadable (not a JSON object with passes)")]
    problems = []
    for name, entry in rec["passes"].items():
        if not isinstance(entry, dict) or entry.get("pending") or "files" not in entry:
            continue
        for filename, (size, mtime_ns) in entry["files"].items():
            try:
                st = os.stat(store.image_dir(image_id) / filename)
            except FileNotFoundError:
                problems.append((filename, f"missing, but the provenance record says {name} wrote it"))
                continue
            if st.st_size != size or st.st_mtime_ns != mtime_ns:
                problems.append((filename, f"changed since its provenance record ({name}): "
                                           "replaced outside stratum? `stratum process --redo all` redoes it"))
    return problems


# ---------------------------------------------------------------------- Dagster (no dagster import here)
def code_version(pass_name: str, model_dir: Path | None = None) -> str:
    """A pass asset's code version: pass version, model id and, where the weights are found locally
    (`model_dir`, the HF cache), their revision or a digest of their files' names, sizes and mtimes.
    Cheap (no content hash): it is computed each time the code location loads."""
    from stratum_core.errors import StratumError
    from stratum_core.models import resolve_model
    from stratum_core.passes import pass_class

    cls = pass_class(pass_name)
    parts = [f"v{cls.version}"]
    if cls.model is not None:
        parts.append(cls.model.hub_id)
        with contextlib.suppress(StratumError, OSError):
            location = resolve_model(cls.model, model_dir=model_dir, offline=True)
            root = Path(location.root)
            if root.parent.name == "snapshots":
                parts.append(f"rev:{root.name}")
            else:
                digest = hashlib.sha256()
                for name in _weight_files(location):
                    st = (root / name).stat()
                    digest.update(f"{name}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
                parts.append(f"files:{digest.hexdigest()[:16]}")
    return "|".join(parts)


def shard_data_version(output_dir: Path, image_ids: Iterable[str], pass_name: str) -> str:
    """A shard's data version for one pass: a digest of its images' provenance stamps (and source hashes),
    so it changes exactly when an artifact of the shard is rewritten or a source changes."""
    store = Store(output_dir)
    digest = hashlib.sha256()
    for image_id in sorted(image_ids):
        rec = read_record(store, image_id) or {"passes": {}}
        entry = rec["passes"].get(pass_name) or {}
        digest.update(f"{image_id}\0{entry.get('stamp')}\0{(rec.get('source') or {}).get('sha256')}\n".encode())
    return digest.hexdigest()[:24]


# ---------------------------------------------------------------------- publish (not wired yet: see docs)
def layer_provenance(output_dir: Path, image_ids: Iterable[str], pass_name: str,
                     allow_mixed: bool = False) -> dict[str, Any]:
    """What produced one layer of the published images: `model`, `weights` (revision), pass `version`
    and `precision`, with `images` counts; `variants` lists every combination when they differ.

    Raises ConfigError when the images were produced by more than one combination, unless `allow_mixed`
    (then the caller reports `variants`). Images without an entry count as `unknown`.
    """
    from stratum_core.errors import ConfigError

    store = Store(output_dir)
    combos: Counter = Counter()
    unknown = 0
    for image_id in image_ids:
        entry = ((read_record(store, image_id) or {"passes": {}})["passes"].get(pass_name) or {})
        key = entry.get("key") if not entry.get("pending") else None
        if not key:
            unknown += 1
            continue
        combos[(key.get("model"), key.get("weights"), key.get("version"), key.get("precision"))] += 1
    variants = [{"model": m, "weights": w, "version": v, "precision": p, "images": n}
                for (m, w, v, p), n in combos.most_common()]
    if len(variants) > 1 and not allow_mixed:
        detail = "; ".join(f"{x['images']} by {x['model']} {x['weights']} v{x['version']} {x['precision']}"
                           for x in variants)
        raise ConfigError(f"layer {pass_name} mixes {len(variants)} model revisions ({detail}): "
                          "run `stratum process --redo stale` first, or allow mixed revisions "
                          "(`stratum publish --allow-mixed-revisions`)")
    result: dict[str, Any] = dict(variants[0]) if variants else {"images": 0}
    result["unknown"] = unknown
    if len(variants) > 1:
        result["variants"] = variants
    return result
