"""Noisy 2-D spirals, irregularly observed: the latent-ODE data of Chen et al. 2018, Section 5.

Each spiral is an Archimedean spiral ``r = a + b * theta`` traversed at unit angular speed,
``theta(t) = theta0 +/- t``: half turn counter-clockwise (outwards), half clockwise (the mirror
image ``(x, -y)``), each from its own ``theta0``. Every spiral is sampled on one regular grid
of ``n_grid + n_extrap`` times spaced ``dt``: the first ``n_grid`` points are the window a model
may observe, the next ``n_extrap`` extend past it (extrapolation targets). Observed values carry
i.i.d. Gaussian noise; the noise-free trajectory is kept for evaluation.
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class Spirals:
    """A set of ``S`` spirals on a common grid of ``T = n_grid + n_extrap`` times.

    Attributes:
        ts: (T,) times, ``dt * arange(T)``, float32.
        clean: (S, T, 2) noise-free positions, float32.
        noisy: (S, T, 2) ``clean`` plus Gaussian noise, float32.
        clockwise: (S,) bool, the direction of each spiral.
        n_grid: how many leading grid points form the observable window.
    """

    ts: np.ndarray
    clean: np.ndarray
    noisy: np.ndarray
    clockwise: np.ndarray
    n_grid: int


def make_spirals(
    seed: int,
    num_spirals: int = 1000,
    *,
    n_grid: int = 100,
    n_extrap: int = 100,
    dt: float = 0.04,
    a: float = 0.0,
    b: float = 0.3,
    theta0_range: tuple[float, float] = (np.pi, 3 * np.pi),
    noise_std: float = 0.1,
) -> Spirals:
    """``num_spirals`` spirals, half clockwise (shuffled), drawn from ``default_rng(seed)``.

    ``theta0`` is uniform in ``theta0_range`` (radians); position ``r (cos theta, sin theta)``,
    mirrored to ``(x, -y)`` for the clockwise ones (whose angle then decreases in time).
    """
    if num_spirals < 1 or n_grid < 1 or n_extrap < 0 or dt <= 0 or noise_std < 0:
        raise ValueError("need num_spirals, n_grid >= 1, n_extrap >= 0, dt > 0, noise_std >= 0")
    rng = np.random.default_rng(seed)
    ts = dt * np.arange(n_grid + n_extrap)
    clockwise = rng.permutation(np.arange(num_spirals) < num_spirals // 2)
    theta = rng.uniform(*theta0_range, size=(num_spirals, 1)) + ts  # (S, T)
    r = a + b * theta
    sign = np.where(clockwise, -1.0, 1.0)[:, None]
    clean = np.stack([r * np.cos(theta), sign * r * np.sin(theta)], axis=-1)
    noisy = clean + noise_std * rng.standard_normal(clean.shape)
    f32 = np.float32
    return Spirals(ts.astype(f32), clean.astype(f32), noisy.astype(f32), clockwise, n_grid)


def sample_observation_indices(seed: int, num_sequences: int, n_grid: int, n: int) -> np.ndarray:
    """(num_sequences, n) sorted grid indices, each row ``n`` of ``range(n_grid)`` drawn
    without replacement (independently per row)."""
    if not 1 <= n <= n_grid:
        raise ValueError(f"need 1 <= n <= n_grid={n_grid}, got n={n}")
    rng = np.random.default_rng(seed)
    keys = rng.random((num_sequences, n_grid))
    return np.sort(np.argsort(keys, axis=1)[:, :n], axis=1).astype(np.int32)


def observation_mask(indices: np.ndarray, n_grid: int) -> np.ndarray:
    """(S, n_grid) float32 mask, 1 where a grid point is observed (``indices``: (S, n))."""
    mask = np.zeros((indices.shape[0], n_grid), np.float32)
    np.put_along_axis(mask, indices, 1.0, axis=1)
    return mask
