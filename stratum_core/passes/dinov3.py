"""The dinov3 pass: DINOv3 ViT-L/16 CLS and patch tokens of the bucket crop.

Preprocessing is done in torch, on the device (transformers' DINOv3 image processor
needs torchvision): /255, ImageNet mean/std, no centre crop — the bucket crop is the
model input. Tokens come out as [CLS, registers, patches]; CLS is the pooled output
(the normed token 0) and the patches are the tokens after the registers.
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

import numpy as np

from stratum_core.artifacts import DINOV3_WIDTH
from stratum_core.buckets import BUCKETS
from stratum_core.errors import InfrastructureError
from stratum_core.models import ModelLocation, ModelSpec
from stratum_core.outcomes import Outcome
from stratum_core.passes.base import Item, Pass
from stratum_core.passes.host_buffers import HostBuffers

log = logging.getLogger("stratum.dinov3")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PATCH_SIZE = 16
WIDTH = DINOV3_WIDTH


def normalize_crops(crops: Any, dtype: Any) -> Any:
    """(B, H, W, 3) uint8 RGB tensor → (B, 3, H, W) `dtype`: /255, then ImageNet mean/std.

    The arithmetic is done in float32 and cast at the end, so bf16 runs see the same
    normalised values, rounded once.
    """
    import torch

    x = crops.permute(0, 3, 1, 2).to(torch.float32).div_(255.0)
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    return x.sub_(mean).div_(std).to(dtype)


def split_tokens(last_hidden_state: Any, registers: int) -> Any:
    """(B, 1 + registers + N, D) → the (B, N, D) patch tokens (CLS and registers dropped)."""
    return last_hidden_state[:, 1 + registers:]


def activation_bytes(bucket_tokens: int, hidden: int, intermediate: int, element_bytes: int) -> int:
    """Rough peak activation memory of one image in one layer (inference frees the others).

    Hidden-state copies (~10 × D) plus the MLP's intermediate and its activation (2 × I)
    per token, doubled for allocator slack and the float32 normalisation input.
    """
    return 2 * bucket_tokens * (10 * hidden + 2 * intermediate) * element_bytes


class DINOv3Pass(Pass):
    """DINOv3 ViT features: `dinov3_cls` (1024,) and `dinov3_patches` (bh/16 · bw/16, 1024), float16."""

    name = "dinov3"
    default = True
    version = "1"
    requires_modules = ("torch", "transformers")
    uses_torch = True
    pip_extra = "gpu"
    model = ModelSpec("facebook/dinov3-vitl16-pretrain-lvd1689m")

    def __init__(self, options, config=None):
        super().__init__(options, config)
        self._model = None
        self._dtype = None
        self._registers = 0
        self._host = HostBuffers(options.device)  # pinned, reused host buffers on CUDA

    def load(self) -> None:
        from stratum_core.passes.torch_utils import auto_batch_size, bytes_per_element, torch_dtype

        self.check_requirements()
        location = self.resolve_weights()
        precision = self.options.resolved_precision
        self._dtype = torch_dtype(precision)
        self._model = load_dinov3(location, self._dtype, self.options.device)
        config = self._model.config
        self._registers = int(config.num_register_tokens)
        largest = 1 + self._registers + max(rows * cols for rows, cols in (b.patch_grid for b in BUCKETS))
        per_item = activation_bytes(largest, config.hidden_size, config.intermediate_size,
                                    bytes_per_element(precision))
        self.chosen_batch = auto_batch_size(self.options.device, per_item, requested=self.options.batch_size)
        log.info("dinov3 from %s (%s), %s on %s, batch %d", location.root, location.source,
                 precision, self.options.device, self.chosen_batch)

    def preprocess(self, item: Item) -> Any:
        """The uint8 crop itself: it is copied once, into the batch (normalising on the device moves
        4× fewer bytes than a float input)."""
        return item.crop

    def forward(self, batch: list[Any]) -> list[tuple[np.ndarray, np.ndarray]]:
        """One model call per crop size (the engine hands over same-bucket batches, so usually one)."""
        outputs: list[tuple[np.ndarray, np.ndarray] | None] = [None] * len(batch)
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for i, crop in enumerate(batch):
            by_shape.setdefault(tuple(crop.shape), []).append(i)
        for indices in by_shape.values():
            cls, patches = self._forward_same_size([batch[i] for i in indices])
            for j, i in enumerate(indices):
                outputs[i] = (cls[j], patches[j])
        return outputs

    def _forward_same_size(self, crops: list[Any]) -> tuple[np.ndarray, np.ndarray]:
        import torch

        pixels = normalize_crops(self._stage(crops), self._dtype)
        out = self._model(pixel_values=pixels)
        cls = out.pooler_output.to(torch.float16)
        patches = split_tokens(out.last_hidden_state, self._registers).to(torch.float16)
        return self._host.to_numpy(cls, patches)

    def _stage(self, crops: list[Any]) -> Any:
        """(B, H, W, 3) uint8 crops on the device, copied once on the host: into a pinned buffer on
        CUDA (then a non-blocking upload), into the batch tensor itself on the CPU."""
        return self._host.stack(crops).to(self.options.device, non_blocking=True)

    def postprocess(self, outputs: list[tuple[np.ndarray, np.ndarray]], items: Sequence[Item]) -> list[Outcome]:
        # No value checks here, on the lane: the writer checks every artifact once against the table
        # (non-finite features fail the image there, as "invalid output: …: non-finite values").
        return [Outcome.ok(dinov3_cls=cls, dinov3_patches=patches) for cls, patches in outputs]

    def close(self) -> None:
        self._model = None


def load_dinov3(location: ModelLocation, dtype: Any, device: str) -> Any:
    """Load a DINOv3 ViT from a transformers folder; a folder that is not one is an InfrastructureError."""
    from transformers import DINOv3ViTModel

    from stratum_core.passes.torch_utils import transformers_config

    root = location.root
    config = transformers_config("dinov3", root, "dinov3_vit", "a DINOv3 ViT")
    if config.hidden_size != WIDTH or config.patch_size != PATCH_SIZE:
        raise InfrastructureError(f"dinov3: {root} has hidden size {config.hidden_size} and patch size "
                                  f"{config.patch_size}; stratum's artifacts need {WIDTH} and {PATCH_SIZE}")
    try:
        model = DINOv3ViTModel.from_pretrained(root, dtype=dtype)
    except (OSError, ValueError, RuntimeError) as exc:
        raise InfrastructureError(f"dinov3: cannot load weights from {root}: {exc}") from exc
    return model.to(device).eval()
