"""Discrete planar normalizing flows (Rezende & Mohamed 2015), the baseline for CNFs.

One layer maps ``z -> z + û tanh(wᵀz + b)`` with log-det ``log|1 + (1 - tanh²(wᵀz + b)) wᵀû|``.
``û = u + (m(wᵀu) - wᵀu) w / |w|²`` with ``m(a) = -1 + softplus(a)`` keeps ``wᵀû > -1``, so every
layer is invertible. The inverse has no closed form; it reduces to one monotone scalar equation
per layer, solved here by bisection (for sampling and plots; not meant to be differentiated).
"""

from __future__ import annotations

import math
from typing import Literal

import equinox as eqx
import jax
import jax.numpy as jnp

from ._broadcast import lift

MAPS = ("base_to_data", "data_to_base")
_BISECTION_STEPS = 60


def standard_normal_log_prob(z):
    """``log N(z; 0, I)`` summed over the last axis: shape ``z.shape[:-1]``."""
    return -0.5 * jnp.sum(z**2, -1) - 0.5 * z.shape[-1] * math.log(2 * math.pi)


class PlanarFlow(eqx.Module):
    """K planar layers, composed: ``g = g_K ∘ ... ∘ g_1``.

    Args:
        dim: dimension ``d`` of the data.
        num_layers: ``K``.
        maps: which way ``g`` goes, and so which use is cheap: "base_to_data" (``x = g(z)``;
            sampling and its log-density are exact and cheap, as needed to minimise KL(q||p))
            or "data_to_base" (``z = g(x)``; ``log p(x)`` is cheap, as needed for maximum
            likelihood). The other direction inverts ``g`` by bisection.
        init_scale: standard deviation of the initial ``w``, ``b`` and of ``û`` (which starts
            orthogonal to ``w``: every layer starts as a volume-preserving shear).
        dtype: parameter dtype.
        key: PRNG key.

    Arrays have shape ``(..., d)``; leading axes are batch axes.
    """

    w: jax.Array  # (K, d)
    u: jax.Array  # (K, d)
    b: jax.Array  # (K,)
    maps: str = eqx.field(static=True)

    def __init__(
        self,
        dim: int,
        num_layers: int,
        *,
        maps: Literal["base_to_data", "data_to_base"] = "base_to_data",
        init_scale: float = 0.1,
        dtype=None,
        key: jax.Array,
    ):
        if dim < 1 or num_layers < 1:
            raise ValueError(f"need dim >= 1 and num_layers >= 1, got {dim}, {num_layers}")
        if maps not in MAPS:
            raise ValueError(f"maps={maps!r} is not one of {MAPS}")
        kw, ku, kb = jax.random.split(key, 3)
        dtype = dtype or jnp.result_type(float)
        w = init_scale * jax.random.normal(kw, (num_layers, dim), dtype)
        u = init_scale * jax.random.normal(ku, (num_layers, dim), dtype)
        # Start every layer volume-preserving (wᵀû = 0, a small shear): with wᵀu = log(e - 1),
        # m(wᵀu) = 0. A plain random u gives wᵀû ≈ m(0) = -0.31 in every layer, a contraction
        # that K = 32 layers compound into a poor start.
        w2 = jnp.sum(w**2, -1, keepdims=True)
        u_perp = u - jnp.sum(u * w, -1, keepdims=True) / w2 * w
        self.w = w
        self.u = u_perp + math.log(math.e - 1) / w2 * w
        self.b = init_scale * jax.random.normal(kb, (num_layers,), dtype)
        self.maps = maps

    @property
    def num_layers(self) -> int:
        return self.w.shape[0]

    def u_hat(self):
        """The constrained ``û`` (K, d): ``wᵀû = -1 + softplus(wᵀu) > -1``."""
        wu = jnp.sum(self.w * self.u, -1)
        m = -1 + jax.nn.softplus(wu)
        return self.u + ((m - wu) / jnp.sum(self.w**2, -1))[:, None] * self.w

    def forward(self, z):
        """``(g(z), log|det ∂g/∂z|)``: shapes ``z.shape`` and ``z.shape[:-1]``."""
        u_hat = self.u_hat().astype(z.dtype)
        params = (self.w.astype(z.dtype), u_hat, self.b.astype(z.dtype))

        def layer(carry, p):
            z, logdet = carry
            w, u, b = p
            h = jnp.tanh(z @ w + b)
            logdet = logdet + jnp.log(jnp.abs(1 + (1 - h**2) * jnp.dot(w, u)))
            return (z + h[..., None] * lift(u, z.ndim), logdet), None

        (z, logdet), _ = jax.lax.scan(layer, (z, jnp.zeros(z.shape[:-1], z.dtype)), params)
        return z, logdet

    def inverse(self, y):
        """``g⁻¹(y)``, layer by layer in reverse, each by bisection on ``a = wᵀz``.

        For one layer ``wᵀy = a + wᵀû tanh(a + b)``: the right side increases strictly in
        ``a`` and differs from ``a`` by at most ``|wᵀû|``, which brackets the root.
        """
        u_hat = self.u_hat().astype(y.dtype)
        params = (self.w.astype(y.dtype), u_hat, self.b.astype(y.dtype))

        def layer(y, p):
            w, u, b = p
            wy, wu = y @ w, jnp.dot(w, u)
            lo, hi = wy - jnp.abs(wu) - 1, wy + jnp.abs(wu) + 1

            def bisect(_, bounds):
                lo, hi = bounds
                mid = 0.5 * (lo + hi)
                above = mid + wu * jnp.tanh(mid + b) > wy
                return jnp.where(above, lo, mid), jnp.where(above, mid, hi)

            lo, hi = jax.lax.fori_loop(0, _BISECTION_STEPS, bisect, (lo, hi))
            a = 0.5 * (lo + hi)
            return y - jnp.tanh(a + b)[..., None] * lift(u, y.ndim), None

        flipped = jax.tree.map(lambda a: a[::-1], params)
        z, _ = jax.lax.scan(layer, y, flipped)
        return z

    def log_prob(self, x):
        """``log p(x)`` under the flow with base ``N(0, I)``: shape ``x.shape[:-1]``."""
        if self.maps == "data_to_base":
            z, logdet = self.forward(x)
            return standard_normal_log_prob(z) + logdet
        z = self.inverse(x)
        _, logdet = self.forward(z)
        return standard_normal_log_prob(z) - logdet

    def sample_with_log_prob(self, z):
        """Map base samples ``z`` to data space: ``(x, log p(x))``."""
        if self.maps == "base_to_data":
            x, logdet = self.forward(z)
            return x, standard_normal_log_prob(z) - logdet
        x = self.inverse(z)
        _, logdet = self.forward(x)
        return x, standard_normal_log_prob(z) + logdet
