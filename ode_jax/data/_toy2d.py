"""2-D toy densities: the potentials of Rezende & Mohamed (2015) and FFJORD's sampled datasets.

Potentials (for density matching, minimise KL(q || p) with ``p ∝ exp(-U)``): ``U1`` (a ring
with two lobes) and ``U2``-``U4`` (waves). ``U2``-``U4`` do not decay along ``z1``, so
``exp(-U)`` is not normalisable; as in the paper's figures the target lives on
``|z1| <= 4``, which we make explicit with a soft quadratic wall outside it (added to all four,
it changes nothing visible inside the box). :func:`potential_log_normalizer` integrates
``exp(-U)`` on a grid, so ``loss + log Z`` is a true KL divergence (>= 0).

Datasets (for maximum likelihood; FFJORD's ``toy_data.py``): ``8gaussians``, ``pinwheel``,
``2spirals``, ``checkerboard``, ``moons``, ``circles``, ``swissroll``. Each is an infinite
stream: :func:`sample_toy` draws ``n`` fresh points from a key, under jit. Where the density
is known in closed form (``8gaussians``, ``checkerboard``), :func:`toy_log_density` evaluates it
and :func:`toy_entropy` estimates its entropy (the lowest NLL any model can reach).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

POTENTIALS = ("U1", "U2", "U3", "U4")
TOY_DATASETS = (
    "8gaussians",
    "pinwheel",
    "2spirals",
    "checkerboard",
    "moons",
    "circles",
    "swissroll",
)
KNOWN_DENSITY = ("8gaussians", "checkerboard")

_WALL = 4.0  # |z1| beyond which the soft wall acts
_WALL_WIDTH = 0.2  # the wall's length scale: U grows by 0.5 * (excess / width)**2


def _check_name(name, known, arg):
    if name not in known:
        raise ValueError(f"{arg}={name!r} is not one of {known}")


def _w1(z1):
    return jnp.sin(2 * jnp.pi * z1 / 4)


def _logaddexp_neg_sq(a, b, scale_a, scale_b):
    """``log(exp(-a²/2σa²) + exp(-b²/2σb²))``, stably."""
    return jnp.logaddexp(-0.5 * (a / scale_a) ** 2, -0.5 * (b / scale_b) ** 2)


def potential(name: str, z):
    """The energy ``U(z)`` of target ``name`` ("U1".."U4"); ``z`` has shape (..., 2)."""
    _check_name(name, POTENTIALS, "name")
    z = jnp.asarray(z)
    if z.shape[-1:] != (2,):
        raise ValueError(f"z must have shape (..., 2), got {z.shape}")
    z1, z2 = z[..., 0], z[..., 1]
    w1 = _w1(z1)
    if name == "U1":
        r = jnp.linalg.norm(z, axis=-1)
        u = 0.5 * ((r - 2) / 0.4) ** 2 - _logaddexp_neg_sq(z1 - 2, z1 + 2, 0.6, 0.6)
    elif name == "U2":
        u = 0.5 * ((z2 - w1) / 0.4) ** 2
    elif name == "U3":
        w2 = 3 * jnp.exp(-0.5 * ((z1 - 1) / 0.6) ** 2)
        u = -_logaddexp_neg_sq(z2 - w1, z2 - w1 + w2, 0.35, 0.35)
    else:
        w3 = 3 * jax.nn.sigmoid((z1 - 1) / 0.3)
        u = -_logaddexp_neg_sq(z2 - w1, z2 - w1 + w3, 0.4, 0.35)
    excess = jnp.maximum(jnp.abs(z1) - _WALL, 0.0)
    return u + 0.5 * (excess / _WALL_WIDTH) ** 2


def potential_log_normalizer(name: str, lim: float = 6.0, n: int = 1201) -> float:
    """``log ∫ exp(-U)`` over ``[-lim, lim]²`` by the trapezoid rule on an ``n x n`` grid."""
    g = np.linspace(-lim, lim, n)
    zz = np.stack(np.meshgrid(g, g, indexing="ij"), -1)
    u = np.asarray(potential(name, jnp.asarray(zz)), np.float64)
    shift = u.min()
    dens = np.exp(-(u - shift))
    integral = np.trapezoid(np.trapezoid(dens, g, axis=1), g)
    return float(np.log(integral) - shift)


def _eight_centers():
    s = 1 / math.sqrt(2)
    pts = [(1, 0), (-1, 0), (0, 1), (0, -1), (s, s), (s, -s), (-s, s), (-s, -s)]
    return 4.0 * jnp.asarray(pts) / 1.414  # FFJORD's scale and normalisation


_EIGHT_STD = 0.5 / 1.414


def _eight_gaussians(key, n):
    k1, k2 = jax.random.split(key)
    idx = jax.random.randint(k1, (n,), 0, 8)
    return _eight_centers()[idx] + _EIGHT_STD * jax.random.normal(k2, (n, 2))


def _pinwheel(key, n):
    radial_std, tangential_std, num_classes, rate = 0.3, 0.1, 5, 0.25
    k1, k2 = jax.random.split(key)
    rads = jnp.linspace(0, 2 * jnp.pi, num_classes, endpoint=False)
    feats = jax.random.normal(k1, (n, 2)) * jnp.array([[radial_std, tangential_std]])
    feats = feats + jnp.array([[1.0, 0.0]])
    labels = jax.random.randint(k2, (n,), 0, num_classes)
    angles = rads[labels] + rate * jnp.exp(feats[:, 0])
    c, s = jnp.cos(angles), jnp.sin(angles)
    rot = jnp.stack([jnp.stack([c, -s], -1), jnp.stack([s, c], -1)], -2)  # (n, 2, 2)
    return 2 * jnp.einsum("ti,tij->tj", feats, rot)


def _two_spirals(key, n):
    k1, k2, k3, k4 = jax.random.split(key, 4)
    m = n // 2
    r = jnp.sqrt(jax.random.uniform(k1, (m,))) * 540 * (2 * jnp.pi) / 360
    d1x = -jnp.cos(r) * r + jax.random.uniform(k2, (m,)) * 0.5
    d1y = jnp.sin(r) * r + jax.random.uniform(k3, (m,)) * 0.5
    arm = jnp.stack([d1x, d1y], -1)
    x = jnp.concatenate([arm, -arm], 0) / 3
    x = jnp.concatenate([x, x[: n - 2 * m]], 0)  # odd n: repeat one point
    return x + 0.1 * jax.random.normal(k4, (n, 2))


def _checkerboard(key, n):
    k1, k2, k3 = jax.random.split(key, 3)
    x1 = jax.random.uniform(k1, (n,)) * 4 - 2
    x2_ = jax.random.uniform(k2, (n,)) - 2 * jax.random.randint(k3, (n,), 0, 2).astype(x1.dtype)
    x2 = x2_ + jnp.floor(x1) % 2
    return 2 * jnp.stack([x1, x2], -1)


def _moons(key, n):
    # sklearn's make_moons(noise=0.1), scaled and shifted as in FFJORD.
    k1, k2 = jax.random.split(key)
    t = jnp.linspace(0, jnp.pi, n)
    outer = jnp.stack([jnp.cos(t), jnp.sin(t)], -1)
    inner = jnp.stack([1 - jnp.cos(t), 1 - jnp.sin(t) - 0.5], -1)
    which = jax.random.bernoulli(k1, 0.5, (n,))[:, None]
    x = jnp.where(which, outer, inner) + 0.1 * jax.random.normal(k2, (n, 2))
    return 2 * x + jnp.array([[-1.0, -0.2]])


def _circles(key, n):
    # sklearn's make_circles(factor=0.5, noise=0.08), times 3, as in FFJORD.
    k1, k2, k3 = jax.random.split(key, 3)
    angle = jax.random.uniform(k1, (n,)) * 2 * jnp.pi
    radius = jnp.where(jax.random.bernoulli(k2, 0.5, (n,)), 1.0, 0.5)
    x = radius[:, None] * jnp.stack([jnp.cos(angle), jnp.sin(angle)], -1)
    return 3 * (x + 0.08 * jax.random.normal(k3, (n, 2)))


def _swissroll(key, n):
    # sklearn's make_swiss_roll(noise=1.0), columns (x, z), divided by 5 as in FFJORD.
    k1, k2 = jax.random.split(key)
    t = 1.5 * jnp.pi * (1 + 2 * jax.random.uniform(k1, (n,)))
    x = jnp.stack([t * jnp.cos(t), t * jnp.sin(t)], -1)
    return (x + jax.random.normal(k2, (n, 2))) / 5


_SAMPLERS = {
    "8gaussians": _eight_gaussians,
    "pinwheel": _pinwheel,
    "2spirals": _two_spirals,
    "checkerboard": _checkerboard,
    "moons": _moons,
    "circles": _circles,
    "swissroll": _swissroll,
}


def sample_toy(name: str, key: jax.Array, n: int, dtype=jnp.float32) -> jax.Array:
    """``n`` fresh samples of dataset ``name`` (one of ``TOY_DATASETS``): shape (n, 2)."""
    _check_name(name, TOY_DATASETS, "name")
    if not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    return _SAMPLERS[name](key, int(n)).astype(dtype)


def toy_log_density(name: str, x):
    """The true log-density of dataset ``name`` at ``x`` (..., 2), for ``KNOWN_DENSITY`` only."""
    _check_name(name, KNOWN_DENSITY, "name")
    x = jnp.asarray(x)
    if name == "8gaussians":
        centers = _eight_centers().astype(x.dtype).reshape((1,) * (x.ndim - 1) + (8, 2))
        d2 = jnp.sum((x[..., None, :] - centers) ** 2, -1)
        log_n = -0.5 * d2 / _EIGHT_STD**2 - jnp.log(2 * jnp.pi * _EIGHT_STD**2)
        return jax.nn.logsumexp(log_n, axis=-1) - jnp.log(8.0)
    # checkerboard: uniform on the 8 squares of side 2 in [-4, 4]² where floor(x1/2) + floor(x2/2)
    # is even (area 32).
    inside = jnp.all(jnp.abs(x) <= 4, -1)
    cell = jnp.floor(x[..., 0] / 2) + jnp.floor(x[..., 1] / 2)
    on = inside & (cell % 2 == 0)
    return jnp.where(on, -jnp.log(32.0), -jnp.inf)


def toy_entropy(name: str, key: jax.Array, n: int = 1_000_000, chunk: int = 100_000) -> tuple:
    """Monte Carlo entropy ``-E[log p(x)]`` of dataset ``name``: ``(estimate, standard error)``.

    The entropy is the lowest expected NLL any model can reach on fresh samples.
    """
    _check_name(name, KNOWN_DENSITY, "name")
    fn = jax.jit(lambda k: toy_log_density(name, sample_toy(name, k, chunk)))
    keys = jax.random.split(key, max(1, n // chunk))
    logp = np.concatenate([np.asarray(fn(k), np.float64) for k in keys])  # mean in float64
    return float(-logp.mean()), float(logp.std() / math.sqrt(logp.size))
