"""Group normalisation for channels-last arrays."""

from __future__ import annotations

import math

import equinox as eqx
import jax.numpy as jnp
from jax import lax

from ._broadcast import lift


class GroupNorm(eqx.Module):
    """Group normalisation (Wu & He 2018) over channels-last arrays.

    Each sample's channels are split into ``groups`` groups; every group is normalised to zero
    mean and unit variance over its channels and the ``spatial_dims`` spatial axes, then scaled
    and shifted per channel.

    Input shape ``(..., *spatial, C)`` with ``len(spatial) == spatial_dims``; any leading axes
    are batch axes (e.g. ``(N, H, W, C)`` or ``(H, W, C)`` with ``spatial_dims=2``, ``(N, C)``
    with ``spatial_dims=0``). Output has the input's shape and dtype.
    """

    weight: jnp.ndarray | None
    bias: jnp.ndarray | None
    groups: int = eqx.field(static=True)
    channels: int = eqx.field(static=True)
    spatial_dims: int = eqx.field(static=True)
    eps: float = eqx.field(static=True)

    def __init__(
        self,
        groups: int,
        channels: int,
        *,
        spatial_dims: int = 2,
        eps: float = 1e-5,
        affine: bool = True,
        dtype=None,
    ):
        if groups < 1 or channels % groups:
            raise ValueError(f"channels={channels} must be a multiple of groups={groups}")
        self.groups = groups
        self.channels = channels
        self.spatial_dims = spatial_dims
        self.eps = eps
        self.weight = jnp.ones((channels,), dtype) if affine else None
        self.bias = jnp.zeros((channels,), dtype) if affine else None

    def __call__(self, x):
        if x.ndim < self.spatial_dims + 1 or x.shape[-1] != self.channels:
            raise ValueError(
                f"GroupNorm expects shape (..., {'*spatial, ' * (self.spatial_dims > 0)}"
                f"{self.channels}) with {self.spatial_dims} spatial axes, got {x.shape}"
            )
        lead = x.shape[: x.ndim - self.spatial_dims - 1]
        space = tuple(range(len(lead), x.ndim - 1))
        per_group = self.channels // self.groups
        count = per_group * math.prod(x.shape[len(lead) : -1])
        acc = x.dtype if jnp.finfo(x.dtype).bits >= 32 else jnp.float32  # sums: >= float32

        # Statistics in two stages, per channel over the spatial axes and then per group, and
        # the normalisation per channel: on XLA:CPU one reduction over (space, channels in
        # group) of the (..., space, groups, C / groups) view, and elementwise work in that
        # view, took 3.5x the time forwards and 3x in the VJP on a (128, 6, 6, 64) batch
        # inside a loop (docs/benchmarks.md, "GroupNorm on the CPU").
        def group_mean(y):
            sums = jnp.sum(y, axis=space, dtype=acc) if space else y.astype(acc)
            return jnp.sum(sums.reshape(lead + (self.groups, per_group)), axis=-1) / count

        def per_channel(v):  # (..., groups) -> broadcastable against x
            v = jnp.repeat(v, per_group, axis=-1)
            return v.reshape(lead + (1,) * self.spatial_dims + (self.channels,))

        centred = x - per_channel(group_mean(x)).astype(x.dtype)
        scale = per_channel(lax.rsqrt(group_mean(jnp.square(centred)) + self.eps))
        if self.weight is None:
            return centred * scale.astype(x.dtype)
        weight, bias = (lift(p.astype(acc), x.ndim) for p in (self.weight, self.bias))
        return centred * (scale * weight).astype(x.dtype) + bias.astype(x.dtype)
