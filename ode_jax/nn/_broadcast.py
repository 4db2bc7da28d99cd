"""Explicit broadcasting: the library runs under ``jax_numpy_rank_promotion="raise"``."""

from __future__ import annotations

import jax.numpy as jnp


def lift(v, ndim: int):
    """``v`` with leading unit axes up to ``ndim`` axes, e.g. a bias (C,) -> (1, 1, 1, C) to
    add to an (N, H, W, C) array without implicit rank promotion."""
    extra = ndim - jnp.ndim(v)
    if extra < 0:
        raise ValueError(f"cannot lift an array of shape {jnp.shape(v)} to {ndim} axes")
    return jnp.reshape(v, (1,) * extra + jnp.shape(v))
