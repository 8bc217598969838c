"""Data for publish tests: a small dataset written through Store, its ids, repo and token (the `hub`
fixture is in tests/conftest.py)."""

from __future__ import annotations

import numpy as np

from stratum_core.artifacts import BY_NAME
from stratum_core.buckets import Bucket
from stratum_core.publish import PublishConfig, RetryPolicy
from stratum_core.store import Store

TOKEN = "hf_SECRETtoken1234567890"
REPO = "me/faces"
FAST_RETRY = RetryPolicy(attempts=4, backoff_s=0.01, max_backoff_s=0.05)
BUCKET = Bucket(1024, 1024)
IDS = ("a/img0", "a/img1", "b/v1.2", "b/img3", "c/img4", "c/img5")  # "b/v1.2": a dot in the last component


def cls_value(i: int) -> np.ndarray:
    return np.full(1024, i / 10, dtype=np.float16)


def make_dataset(root, ids=IDS, captions=True, dinov3=True, patches=16) -> list[str]:
    """Images i = 0..n-1 with caption "caption i", CLS filled with i/10, `patches` patch rows."""
    store = Store(root)
    for i, image_id in enumerate(ids):
        store.write(image_id, BY_NAME["metadata"], {"image_id": image_id, "source_path": image_id + ".png",
                                                    "width": 100 + i, "height": 200, "aspect_bucket": "1024x1024"})
        if captions:
            store.write(image_id, BY_NAME["caption"], f"caption {i}")
        if dinov3:
            store.write(image_id, BY_NAME["dinov3_cls"], cls_value(i))
            store.write(image_id, BY_NAME["dinov3_patches"], np.full((patches, 1024), i, dtype=np.float16))
    return sorted(ids)


def config(**kwargs) -> PublishConfig:
    kwargs.setdefault("retry", FAST_RETRY)
    return PublishConfig(hub_repo=kwargs.pop("hub_repo", REPO), **kwargs)


def record_dinov3(root, image_ids, weights: str, version: str = "1", precision: str = "fp16",
                  model: str = "facebook/dinov3-vitl16-pretrain-lvd1689m") -> None:
    """Give the images the provenance record the engine's writer leaves after a dinov3 run with `weights`."""
    from stratum_core import provenance
    from stratum_core.store import write_atomic

    store = Store(root)
    for image_id in image_ids:
        record = provenance.read_record(store, image_id) or {"format": provenance.FORMAT, "passes": {}}
        record["passes"]["dinov3"] = {"key": {"version": version, "model": model, "weights": weights,
                                              "precision": precision}, "stamp": "s0", "time": 0.0}
        write_atomic(store.image_dir(image_id) / provenance.RECORD_NAME, provenance.encode_record(record))
