"""Noisy 2-D spirals, irregularly observed: the latent-ODE data of Chen et al. 2018, Section 5.

There are two long noise-free trajectories, one per direction, each ``n_total`` grid points
spaced ``dt``: an Archimedean spiral ``r = a + b * theta`` traversed outwards at unit angular
speed, ``theta(t) = theta_min + t``, counter-clockwise, and its mirror image ``(x, -y)``
(clockwise), optionally moved apart to centres ``(+-offset, 0)``. A *sequence* is a stretch
of one of them: it starts at a grid index ``start`` (its own time 0) and holds ``n_grid``
points, the window a model may observe, followed by ``n_extrap`` points, the extrapolation
targets. Sequences differ in direction and start, as in torchdiffeq's
``examples/latent_ode.py`` (the windows there are also cut from two long spirals). Observed
values carry i.i.d. Gaussian noise; the noise-free values are kept.

Coverage: training sequences start anywhere their window fits on the trajectory
(``start <= n_total - n_grid``), so together the training windows cover all of it. A sequence
whose extrapolation targets also lie on it (``start <= n_total - n_grid - n_extrap``) is
therefore asked to predict parts of the spiral that other training windows show; the
experiment draws its test sequences that way. The formula is analytic, so targets past
``n_total`` (of late training sequences) still have a value.
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class Spirals:
    """``S`` sequences, each on its own copy of the grid of ``T = n_grid + n_extrap`` times.

    Attributes:
        ts: (T,) times from the sequence's start, ``dt * arange(T)``, float32.
        clean: (S, T, 2) noise-free positions, float32.
        noisy: (S, T, 2) ``clean`` plus Gaussian noise, float32.
        clockwise: (S,) bool, the direction of each sequence.
        start: (S,) int, the grid index on the long trajectory where each sequence starts.
        n_grid: how many leading grid points form the observable window.
    """

    ts: np.ndarray
    clean: np.ndarray
    noisy: np.ndarray
    clockwise: np.ndarray
    start: np.ndarray
    n_grid: int

    def take(self, rows) -> Spirals:
        """The sequences ``rows`` (a slice, an index array or a boolean mask)."""
        return dataclasses.replace(
            self,
            clean=self.clean[rows],
            noisy=self.noisy[rows],
            clockwise=self.clockwise[rows],
            start=self.start[rows],
        )


def spiral_positions(
    k, clockwise, *, dt: float, a: float, b: float, theta_min: float, offset: float = 0.0
):
    """Noise-free position at grid index ``k`` (any float/int array) of the long trajectory
    in direction ``clockwise`` (broadcast with ``k``): ``(*shape, 2)`` float64. The
    counter-clockwise spiral is centred at ``(offset, 0)``, the clockwise one at
    ``(-offset, 0)``."""
    theta = theta_min + dt * np.asarray(k, np.float64)
    r = a + b * theta
    sign = np.where(clockwise, -1.0, 1.0)
    return np.stack([r * np.cos(theta) - sign * offset, sign * r * np.sin(theta)], axis=-1)


def make_spirals(
    seed: int,
    num_spirals: int = 1000,
    *,
    n_grid: int = 100,
    n_extrap: int = 100,
    start_max: int = 300,
    dt: float = 0.04,
    a: float = 0.0,
    b: float = 0.3,
    theta_min: float = np.pi,
    offset: float = 0.0,
    noise_std: float = 0.1,
) -> Spirals:
    """``num_spirals`` sequences from ``default_rng(seed)``: exactly half clockwise (shuffled),
    each starting at a grid index drawn uniformly from ``0 .. start_max`` (inclusive).

    Sequence ``s`` holds the trajectory's grid points ``start[s] .. start[s] + n_grid +
    n_extrap - 1``, i.e. angles ``theta_min + dt * (start + arange(T))``.
    """
    if num_spirals < 1 or n_grid < 1 or n_extrap < 0 or dt <= 0 or noise_std < 0:
        raise ValueError("need num_spirals, n_grid >= 1, n_extrap >= 0, dt > 0, noise_std >= 0")
    if start_max < 0:
        raise ValueError(f"need start_max >= 0, got {start_max}")
    rng = np.random.default_rng(seed)
    steps = np.arange(n_grid + n_extrap)
    clockwise = rng.permutation(np.arange(num_spirals) < num_spirals // 2)
    start = rng.integers(0, start_max + 1, size=num_spirals)
    k = start[:, None] + steps  # (S, T) grid indices on the long trajectory
    clean = spiral_positions(
        k, clockwise[:, None], dt=dt, a=a, b=b, theta_min=theta_min, offset=offset
    )
    noisy = clean + noise_std * rng.standard_normal(clean.shape)
    f32 = np.float32
    ts = (dt * steps).astype(f32)
    return Spirals(ts, clean.astype(f32), noisy.astype(f32), clockwise, start, n_grid)


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
