"""MLP vector fields ``f(t, y)`` for ODEs on vectors."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import equinox as eqx
import jax
import jax.numpy as jnp

from ._linear import ConcatLinear, ConcatSquashLinear, PlainLinear

_LAYERS = {"none": PlainLinear, "concat": ConcatLinear, "concatsquash": ConcatSquashLinear}


class MLPField(eqx.Module):
    """A multilayer perceptron vector field ``dy/dt = f(t, y)``.

    Args:
        in_size: state size ``d``; the output has the same size unless ``out_size`` is given.
        width: hidden units per layer.
        depth: number of hidden layers (``depth + 1`` linear layers).
        time: how ``t`` enters every layer: "none" (autonomous field), "concat" (``t`` appended
            as an input feature) or "concatsquash" (FFJORD's gated layers).
        activation: elementwise nonlinearity between layers.
        features: optional fixed map applied to ``y`` before the first layer (e.g.
            ``lambda y: y**3``); its output must still have ``in_size`` features.
        dtype: parameter dtype (default: JAX's default float).
        key: PRNG key for initialisation.

    Called as ``field(t, y)`` or ``field(t, y, args)`` (``args`` ignored, so the module can be
    passed to :func:`ode_jax.odeint` as ``args`` with ``f = lambda t, y, m: m(t, y)``).
    ``y`` has shape ``(..., d)``: leading batch axes are allowed and share the same ``t``.
    """

    layers: tuple
    activation: Callable = eqx.field(static=True)
    features: Callable | None = eqx.field(static=True)
    time: str = eqx.field(static=True)

    def __init__(
        self,
        in_size: int,
        width: int,
        depth: int,
        *,
        out_size: int | None = None,
        time: Literal["none", "concat", "concatsquash"] = "none",
        activation: Callable = jnp.tanh,
        features: Callable | None = None,
        dtype=None,
        key: jax.Array,
    ):
        if time not in _LAYERS:
            raise ValueError(f"time={time!r} is not one of {tuple(_LAYERS)}")
        if depth < 0 or width < 1:
            raise ValueError(f"need depth >= 0 and width >= 1, got depth={depth}, width={width}")
        sizes = [in_size] + [width] * depth + [out_size or in_size]
        keys = jax.random.split(key, len(sizes) - 1)
        layer = _LAYERS[time]
        self.layers = tuple(
            layer(a, b, dtype=dtype, key=k) for a, b, k in zip(sizes[:-1], sizes[1:], keys)
        )
        self.activation = activation
        self.features = features
        self.time = time

    def __call__(self, t, y, args=None):
        del args
        h = y if self.features is None else self.features(y)
        for layer in self.layers[:-1]:
            h = self.activation(layer(t, h))
        return self.layers[-1](t, h).astype(y.dtype)
