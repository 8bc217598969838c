"""The metadata pass: metadata.json for every image that decodes."""

from __future__ import annotations

from typing import Sequence

from stratum_core.outcomes import Outcome
from stratum_core.passes.base import Item, Pass
from stratum_core.provenance import source_fingerprint


class MetadataPass(Pass):
    name = "metadata"

    def forward(self, batch: list[Item]) -> list[Item]:
        return batch

    def postprocess(self, outputs: list[Item], items: Sequence[Item]) -> list[Outcome]:
        return [Outcome.ok(metadata={
            "image_id": item.image_id,
            "source_path": item.source.rel_path,
            "width": item.decoded.width,
            "height": item.decoded.height,
            "aspect_bucket": item.bucket.label,
            # size, mtime, sha256 for staleness (provenance.py), from the bytes the intake read: no second read
            "source": source_fingerprint(item.source.path, item.decoded.read),
        }) for item in outputs]
