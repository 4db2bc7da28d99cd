"""Terminal events: stop a solve where a condition function crosses zero.

The stepping loop evaluates ``cond_fn`` at the end of every accepted step. When its sign changes
(in the allowed direction) within a step, the crossing is located on the solver's dense output
by a bracketing root finder (Illinois' variant of regula falsi, which converges superlinearly
and never leaves the bracket) to within a few ulps of t, and the solve stops there.

The event time is differentiable (implicit function theorem): with g(t*, y(t*)) = 0,

    dt*/dx = -(dg/dy dy(t*)/dx + dg/dx) / (dg/dy f(t*, y*) + dg/dt),

which :func:`differentiable_event_time` implements as one Newton step whose value is zero.
"""

from __future__ import annotations

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp


class Event(eqx.Module):
    """A terminal event: the first time ``cond_fn(t, y, args)`` crosses zero.

    Args:
        cond_fn: ``cond_fn(t, y, args) -> scalar``, smooth in (t, y) near the crossing.
        direction: None (either way), +1 (upward crossings only: from < 0 to >= 0) or -1
            (downward only: from > 0 to <= 0). A solve that starts exactly on zero does not
            stop there; the crossing must happen after ``ts[0]``.
    """

    cond_fn: Callable = eqx.field(static=True)
    direction: int | None = eqx.field(static=True, default=None)

    def __post_init__(self):
        if not callable(self.cond_fn):
            raise TypeError(f"Event: cond_fn must be callable, got {type(self.cond_fn).__name__}")
        if self.direction not in (None, 1, -1):
            raise ValueError(f"Event: direction must be None, +1 or -1, got {self.direction!r}")

    def crossed(self, g0, g1):
        """Whether the condition crossed zero between two values (in the allowed direction)."""
        up = (g0 < 0) & (g1 >= 0)
        down = (g0 > 0) & (g1 <= 0)
        if self.direction == 1:
            return up
        if self.direction == -1:
            return down
        return up | down


def find_root(h, g0, g1, dtype, max_iter: int = 100):
    """theta in (0, 1] with h(theta) on the far side of zero from h(0) = g0, given a bracket
    [0, 1] with h(1) = g1 across zero; located to a few ulps by Illinois' method."""
    eps = jnp.finfo(dtype).eps
    zero = jnp.zeros((), dtype)

    def cond(c):
        lo, hi, h_lo, h_hi, side, i = c
        return (i < max_iter) & (hi - lo > 4 * eps * jnp.maximum(hi, 1e-3)) & (h_hi != 0)

    def body(c):
        lo, hi, h_lo, h_hi, side, i = c
        # Regula falsi step, kept strictly inside the bracket; fall back to bisection if the
        # secant is degenerate.
        denom = h_hi - h_lo
        x = jnp.where(denom != 0, hi - h_hi * (hi - lo) / jnp.where(denom != 0, denom, 1), zero)
        mid = 0.5 * (lo + hi)
        bad = ~jnp.isfinite(x) | (x <= lo) | (x >= hi)
        x = jnp.where(bad, mid, x)
        hx = h(x).astype(dtype)
        same_as_lo = jnp.sign(hx) == jnp.sign(h_lo)
        # Illinois: halve the value at the end that stays, so the secant stops stalling there.
        new_lo = jnp.where(same_as_lo, x, lo)
        new_h_lo = jnp.where(same_as_lo, hx, jnp.where(side == -1, 0.5 * h_lo, h_lo))
        new_hi = jnp.where(same_as_lo, hi, x)
        new_h_hi = jnp.where(same_as_lo, jnp.where(side == 1, 0.5 * h_hi, h_hi), hx)
        new_side = jnp.where(same_as_lo, 1, -1)
        return new_lo, new_hi, new_h_lo, new_h_hi, new_side, i + 1

    init = (zero, jnp.ones((), dtype), g0.astype(dtype), g1.astype(dtype), 0, 0)
    _, hi, _, _, _, _ = jax.lax.while_loop(cond, body, init)
    return hi


def differentiable_event_time(event: Event, t_star, evaluate, field, args):
    """``t_star`` with the implicit-function-theorem derivative (value unchanged).

    ``evaluate(t)``: the solution at a fixed time t, differentiable w.r.t. y0, args and ts[0];
    ``field(t, y)``: the vector field. One Newton step g / g' whose value is zero carries the
    derivative -(dg at fixed t) / (dg/dt along the solution).
    """
    t0 = jax.lax.stop_gradient(t_star)
    y_fixed = evaluate(t0)
    g = event.cond_fn(t0, y_fixed, args)
    y_sg = jax.lax.stop_gradient(y_fixed)
    args_sg = jax.tree.map(lambda x: jax.lax.stop_gradient(x) if eqx.is_array(x) else x, args)
    f_star = field(t0, y_sg)
    _, slope = jax.jvp(
        lambda t, y: event.cond_fn(t, y, args_sg), (t0, y_sg), (jnp.ones_like(t0), f_star)
    )
    slope = jax.lax.stop_gradient(slope)
    g_dev = g - jax.lax.stop_gradient(g)  # zero, with the derivative of g at fixed t
    safe = jnp.where(slope != 0, slope, 1)
    return t0 - (g_dev / safe).astype(t0.dtype)
