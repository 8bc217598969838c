"""Read a stratum dataset straight into a training loop: locally (`StratumDataset`) or from the Hub (`HubStream`).

numpy is all it needs; `collate` returns torch tensors when torch is installed, and `HubStream` needs the
`publish` extra (huggingface_hub, pyarrow), both imported only when used.
"""

from __future__ import annotations

from stratum_core.data.arrays import SampleError
from stratum_core.data.collate import collate
from stratum_core.data.local import StratumDataset
from stratum_core.data.sampler import BucketBatchSampler

__all__ = ["BucketBatchSampler", "HubStream", "HubStreamError", "SampleError", "StratumDataset", "collate"]


def __getattr__(name: str):
    if name in ("HubStream", "HubStreamError"):  # huggingface_hub and pyarrow load with it, not with the package
        from stratum_core.data import hub

        return getattr(hub, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
