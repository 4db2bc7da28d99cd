"""Group normalisation for channels-last arrays."""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp

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
        grouped = x.reshape(lead + (-1, self.groups, self.channels // self.groups))
        axes = (len(lead), len(lead) + 2)  # spatial (flattened) and within-group channels
        mean = jnp.mean(grouped, axis=axes, keepdims=True)
        var = jnp.var(grouped, axis=axes, keepdims=True)
        out = ((grouped - mean) * jnp.reciprocal(jnp.sqrt(var + self.eps))).reshape(x.shape)
        if self.weight is not None:
            weight, bias = (lift(p.astype(x.dtype), x.ndim) for p in (self.weight, self.bias))
            out = out * weight + bias
        return out.astype(x.dtype)
