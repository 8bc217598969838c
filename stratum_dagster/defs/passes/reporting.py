"""What a pass asset reports: run counts and provenance as metadata, a preview, and the verify check."""


import base64
import io
import logging
from typing import Any, Sequence

import dagster as dg

from stratum_core.artifacts import artifacts_of, pass_files
from stratum_core.shards import shards_dir
from stratum_core.store import Store
from stratum_dagster.resources import ShardRun, StratumResource

log = logging.getLogger("stratum.dagster")

PREVIEW_WIDTH = 384  # px; the sheet's tiles are still recognisable, the event stays small
PREVIEW_JPEG_QUALITY = 70
MAX_LISTED_IDS = 50


def run_metadata(shard_run: ShardRun, pass_name: str, stratum: StratumResource,
                 preview: str | None = None) -> dict[str, Any]:
    """Counts, failures, rate and provenance of one pass of a shard run, as that pass's asset metadata."""
    summary = shard_run.summary
    provenance = summary.provenance.get(pass_name, {})
    counts = summary.passes[pass_name].to_dict()
    metadata: dict[str, Any] = {
        "images": len(shard_run.images),
        "done": counts["done"],
        "existing": counts["existing"],
        "skipped": counts["skipped"],
        "failed": counts["failed"],
        # an image that does not decode fails under "metadata" and never reaches the pass
        "decode_failed": sum(summary.passes["metadata"].failed.values()),
        # the rate and time of the whole engine run, which ran these passes together
        "run_passes": ",".join(shard_run.pass_names),
        "rate_images_per_s": round(summary.rate, 3),
        "elapsed_s": round(summary.elapsed, 3),
        "pass_seconds": round(summary.passes[pass_name].seconds, 3),
        "device": provenance.get("device", shard_run.device),
        "model": provenance.get("model", "-"),
        "precision": provenance.get("precision", "-"),
        "pass_version": provenance.get("version", "-"),
        "dataset_dir": dg.MetadataValue.path(str(stratum.output_dir)),
        "shard_record": dg.MetadataValue.path(str(shards_dir(stratum.output_dir) / f"{shard_run.key}.json")),
    }
    if counts["failed"] or counts["skipped"]:
        metadata["reasons"] = dg.MetadataValue.json({"failed": counts["failed_reasons"],
                                                     "skipped": counts["skipped_reasons"]})
    failures = [f for f in summary.failures if f.pass_name in (pass_name, "metadata")][:MAX_LISTED_IDS]
    if failures:
        metadata["failures"] = dg.MetadataValue.md("\n".join(
            f"- `{f.image}` {f.reason}: {f.message[:200]}" for f in failures))
    if preview:
        metadata["preview"] = dg.MetadataValue.md(preview)
    return metadata


def preview_markdown(shard_run: ShardRun, pass_names: Sequence[str], stratum: StratumResource) -> str | None:
    """Markdown with the contact sheet of the shard's first image that has every artifact of `pass_names`,
    embedded as a small JPEG (a few tens of KB: it lives in the event log of every step run)."""
    from stratum_core.preview import sheet_png  # here: the sheet code is only needed for a preview
    store = Store(stratum.output_dir)
    wanted = {a.filename for name in pass_names for a in artifacts_of(name)}
    for image in shard_run.images[:20]:  # a shard's first images are enough to find a finished one
        if wanted <= store.listing(image.image_id):
            try:
                png = sheet_png(stratum.output_dir, image.image_id, source_dir=stratum.input_dir,
                                max_width=PREVIEW_WIDTH)
                jpeg = png_to_jpeg(png)
            except Exception as exc:  # a preview is a nicety: never fail the asset over it
                log.warning("no preview for %s: %s", image.image_id, exc)
                return None
            return f"`{image.image_id}`\n\n![preview](data:image/jpeg;base64,{base64.b64encode(jpeg).decode()})"
    return None


def png_to_jpeg(png: bytes, quality: int = PREVIEW_JPEG_QUALITY) -> bytes:
    """The same picture as a JPEG: a sheet is photos and colour maps, which JPEG stores in far fewer bytes."""
    from PIL import Image

    buffer = io.BytesIO()
    with Image.open(io.BytesIO(png)) as image:
        image.convert("RGB").save(buffer, format="JPEG", quality=quality, optimize=True)
    return buffer.getvalue()


def verify_shard(stratum: StratumResource, pass_name: str, key: str) -> dg.AssetCheckResult:
    """Check the shard's artifacts of one pass (shape, dtype, values); failing ids go in the metadata."""
    from stratum_core.shards import load_shard
    from stratum_core.verify import check_image

    store = Store(stratum.output_dir)
    filenames = pass_files(pass_name)
    bad: dict[str, list[str]] = {}
    missing, checked = [], 0
    for image_id in load_shard(stratum.output_dir, key).image_ids:
        names = store.listing(image_id)
        if not filenames <= names:
            missing.append(image_id)
        if not filenames & names:
            continue
        checked += 1
        problems = [p for p in check_image(store, image_id, names, only=filenames) if p.filename in filenames]
        if problems:
            bad[image_id] = [f"{p.filename}: {p.message}" for p in problems]
    return dg.AssetCheckResult(
        passed=not bad,
        metadata={"checked_images": checked, "bad_images": len(bad), "missing_images": len(missing),
                  "bad_ids": dg.MetadataValue.json(dict(list(bad.items())[:MAX_LISTED_IDS])),
                  "missing_ids": dg.MetadataValue.json(missing[:MAX_LISTED_IDS])})
