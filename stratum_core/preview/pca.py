"""The first three principal components of DINOv3 patch tokens, as an RGB image at the patch grid."""

from __future__ import annotations

import numpy as np

from stratum_core.buckets import Bucket

# Components are stretched between these percentiles, so a few outlier patches do not grey out the rest.
_LOW_PERCENTILE, _HIGH_PERCENTILE = 1.0, 99.0


def principal_axes(x: np.ndarray, count: int, oversample: int = 8, power_iterations: int = 4) -> np.ndarray:
    """(count', D) top principal axes of centred (N, D) rows, count' = min(count, N, D).

    Randomised SVD (Halko et al. 2011) with a fixed seed: a few passes of x @ (x.T @ y) find the
    top subspace, then an exact SVD of its small (k, D) projection gives the axes. Only three axes
    are needed, and a full 1024-wide decomposition takes seconds on a busy CPU.
    """
    rank = min(x.shape)
    k = min(count + oversample, rank)
    y = x @ np.random.default_rng(0).standard_normal((x.shape[1], k)).astype(x.dtype)
    for _ in range(power_iterations):
        y, _ = np.linalg.qr(y)
        y = x @ (x.T @ y)
    q, _ = np.linalg.qr(y)
    _, _, vt = np.linalg.svd(q.T @ x, full_matrices=False)
    return vt[:min(count, rank)]


def principal_components(tokens: np.ndarray, count: int = 3) -> np.ndarray:
    """(N, D) tokens → (N, count) projections on the top principal axes (zeros where there are fewer).

    Each axis's sign is chosen so its largest-magnitude projection is positive, which makes the
    colours of one image stable across runs.
    """
    x = np.nan_to_num(tokens.astype(np.float32))
    x = x - x.mean(axis=0, keepdims=True)
    axes = principal_axes(x, count)
    projections = np.zeros((x.shape[0], count), dtype=np.float32)
    projections[:, :len(axes)] = x @ axes.T
    for k in range(len(axes)):
        column = projections[:, k]
        if column[np.argmax(np.abs(column))] < 0:
            projections[:, k] = -column
    return projections


def _stretch(values: np.ndarray) -> np.ndarray:
    """Values → [0, 1] between robust percentiles; a constant channel becomes 0.5."""
    low, high = np.percentile(values, [_LOW_PERCENTILE, _HIGH_PERCENTILE])
    if high - low <= 1e-6 * max(1.0, abs(high)):
        return np.full_like(values, 0.5)
    return np.clip((values - low) / (high - low), 0.0, 1.0)


def pca_rgb(patches: np.ndarray, bucket: Bucket) -> np.ndarray:
    """(rows·cols, D) row-major patch tokens → (rows, cols, 3) uint8, rows = bh/16, cols = bw/16."""
    rows, cols = bucket.patch_grid
    if patches.ndim != 2 or patches.shape[0] != rows * cols:
        raise ValueError(f"expected ({rows * cols}, D) patch tokens for bucket {bucket.label}, got {patches.shape}")
    projections = principal_components(patches, 3)
    channels = [_stretch(projections[:, k]) for k in range(3)]
    rgb = np.stack(channels, axis=-1).reshape(rows, cols, 3)
    return (rgb * 255).round().astype(np.uint8)
