"""The first three principal components of DINOv3 patch tokens, as an RGB image at the patch grid."""

from __future__ import annotations

import numpy as np

from stratum_core.buckets import Bucket

# Components are stretched between these percentiles, so a few outlier patches do not grey out the rest.
_LOW_PERCENTILE, _HIGH_PERCENTILE = 1.0, 99.0


def _orthonormal_basis(y: np.ndarray) -> np.ndarray:
    """(N, k') orthonormal columns spanning the columns of (N, k) `y`; directions of ~zero length are dropped.

    Through the eigenvectors of the small k×k Gram matrix instead of np.linalg.qr, whose threaded
    LAPACK path is very slow on a busy CPU for tall, thin matrices.
    """
    y64 = y.astype(np.float64)
    w, v = np.linalg.eigh(y64.T @ y64)
    keep = w > max(float(w.max(initial=0.0)), 1e-30) * 1e-10
    return (y64 @ (v[:, keep] / np.sqrt(w[keep]))).astype(y.dtype)


def principal_axes(x: np.ndarray, count: int, oversample: int = 8, power_iterations: int = 4) -> np.ndarray:
    """(count', D) top principal axes of centred (N, D) rows, count' ≤ min(count, N, D) (fewer when x has lower rank).

    Randomised SVD (Halko et al. 2011) with a fixed seed: a few passes of x @ (x.T @ q) find the
    top subspace, then an exact SVD of its small (k, D) projection gives the axes. Only three axes
    are needed, and a full 1024-wide decomposition takes seconds on a busy CPU.
    """
    k = min(count + oversample, *x.shape)
    q = _orthonormal_basis(x @ np.random.default_rng(0).standard_normal((x.shape[1], k)).astype(x.dtype))
    for _ in range(power_iterations):
        q = _orthonormal_basis(x @ (x.T @ q))
    if q.shape[1] == 0:
        return np.zeros((0, x.shape[1]), x.dtype)
    _, singular, vt = np.linalg.svd(q.T @ x, full_matrices=False)
    return vt[:count][singular[:count] > singular[0] * 1e-6]


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
