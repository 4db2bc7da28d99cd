"""Time-conditioned linear layers acting on the last axis (any leading batch axes).

Every layer takes ``dtype`` for its parameters (default: JAX's default float) and computes in
the input's dtype.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp

from ._broadcast import lift


def _time_like(t, x):
    """``t`` as a (1,)-shaped array of ``x``'s dtype, broadcast to ``x``'s leading axes."""
    t = jnp.asarray(t, x.dtype).reshape(())
    return jnp.broadcast_to(t, x.shape[:-1] + (1,))


class ConcatLinear(eqx.Module):
    """``W [x, t] + b``: a linear layer that sees time as one more input feature.

    Input ``x`` has shape ``(..., in_size)``; output ``(..., out_size)``.
    """

    linear: eqx.nn.Linear

    def __init__(self, in_size: int, out_size: int, *, dtype=None, key: jax.Array):
        self.linear = eqx.nn.Linear(in_size + 1, out_size, dtype=dtype, key=key)

    def __call__(self, t, x):
        xt = jnp.concatenate([x, _time_like(t, x)], axis=-1)
        return _apply(self.linear, xt)


class ConcatSquashLinear(eqx.Module):
    """FFJORD's ConcatSquash layer: ``(W x + b) * sigmoid(g t + c) + h t``.

    Time gates (per output unit) and shifts the output of an ordinary linear layer.
    Input ``x`` has shape ``(..., in_size)``; output ``(..., out_size)``.
    """

    linear: eqx.nn.Linear
    gate: eqx.nn.Linear
    shift: eqx.nn.Linear

    def __init__(self, in_size: int, out_size: int, *, dtype=None, key: jax.Array):
        k1, k2, k3 = jax.random.split(key, 3)
        self.linear = eqx.nn.Linear(in_size, out_size, dtype=dtype, key=k1)
        self.gate = eqx.nn.Linear(1, out_size, dtype=dtype, key=k2)
        self.shift = eqx.nn.Linear(1, out_size, use_bias=False, dtype=dtype, key=k3)

    def __call__(self, t, x):
        tt = _time_like(t, x)
        gate = jax.nn.sigmoid(_apply(self.gate, tt))
        return _apply(self.linear, x) * gate + _apply(self.shift, tt)


class PlainLinear(eqx.Module):
    """``W x + b``, ignoring time: the time-independent member of the family above."""

    linear: eqx.nn.Linear

    def __init__(self, in_size: int, out_size: int, *, dtype=None, key: jax.Array):
        self.linear = eqx.nn.Linear(in_size, out_size, dtype=dtype, key=key)

    def __call__(self, t, x):
        del t
        return _apply(self.linear, x)


def _apply(linear: eqx.nn.Linear, x):
    """An ``eqx.nn.Linear`` over the last axis of ``x`` (batched, in ``x``'s dtype)."""
    w = linear.weight.astype(x.dtype)
    y = x @ w.T
    if linear.bias is not None:
        y = y + lift(linear.bias.astype(x.dtype), y.ndim)
    return y
