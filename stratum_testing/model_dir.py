"""A $STRATUM_MODEL_DIR of smoke-test models for every model pass, each under `<root>/<hub id>/`."""

from __future__ import annotations

from pathlib import Path


def build_smoke_model_dir(root: Path) -> Path:
    """Smoke models (real file formats and names, few layers) for dinov3, t5, pose, seg, depth and normal."""
    import torch

    from stratum_core.passes.dinov3 import DINOv3Pass
    from stratum_core.passes.dwpose import DWPosePass
    from stratum_core.passes.t5 import T5Pass
    from stratum_testing.dwpose_models import build_dwpose_folder
    from stratum_testing.sapiens_models import build_sapiens_models
    from stratum_testing.transformers_models import build_dinov3, build_t5

    torch.set_num_threads(1)
    build_dinov3(root / DINOv3Pass.model.hub_id)
    build_t5(root / T5Pass.model.hub_id)
    build_dwpose_folder(root / DWPosePass.model.hub_id)
    build_sapiens_models(root)
    return root
