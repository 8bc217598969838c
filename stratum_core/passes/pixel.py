"""The pixel pass: the bucket crop itself as CHW float16 in [0, 1] (opt-in)."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from stratum_core.outcomes import Outcome
from stratum_core.passes.base import Item, Pass


def crop_to_pixel(crop: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 → (3, H, W) float16 in [0, 1]."""
    return (crop.transpose(2, 0, 1).astype(np.float32) * (1.0 / 255.0)).astype(np.float16)


class PixelPass(Pass):
    name = "pixel"

    def forward(self, batch: list[Item]) -> list[np.ndarray]:
        return [crop_to_pixel(item.crop) for item in batch]

    def postprocess(self, outputs: list[np.ndarray], items: Sequence[Item]) -> list[Outcome]:
        return [Outcome.ok(pixel=array) for array in outputs]
