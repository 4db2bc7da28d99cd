"""Dense output after the solve: y(t) anywhere in the solved interval, from the recorded steps.

The loop records, for every accepted step n, its start time t_n, its size dt_n, the solver's
dense info and its end state (``LoopOutput.dense``); an event records the step it stopped in
(``LoopOutput.event``). Evaluation looks the step up and calls the solver's own interpolant.

Gradients: under the discrete and reversible adjoints the recorded buffers are outputs of the
solve whose cotangents the backward walk adds into each step's pull-back (:func:`injector`), so
``evaluate`` is differentiated exactly. The continuous adjoint cannot take cotangents on stage
values; it differentiates ``evaluate(t)`` as the exact solution at t with a backward solve from t
(see ``ContinuousAdjoint.evaluator``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ._adjoint import tree_take
from ._solver import tree_where


def step_index(bufs, count, s):
    """The accepted step whose interval holds time s (steps are stored in order)."""
    t = bufs["t"]
    idx = jnp.arange(t.shape[0], dtype=jnp.int32)
    # A binary search (O(log max_steps) per time), the unused slots pushed past every time.
    t = jnp.where(idx < count, t, jnp.asarray(jnp.inf, t.dtype))
    n = jnp.searchsorted(t, s, side="right", method="scan").astype(jnp.int32) - 1
    return jnp.clip(n, 0, jnp.maximum(count - 1, 0))


def interpolate_recorded(solver, bufs, count, s, s0, s_end):
    """y at (forward-running) time s from the recorded steps; NaN outside [s0, s_end]."""
    n = step_index(bufs, count, s)
    t_n, dt_n = bufs["t"][n], jax.lax.stop_gradient(bufs["dt"][n])
    theta = (s - t_n) / dt_n
    y = solver.interpolate(tree_take(bufs["info"], n), theta)
    inside = (s >= s0) & (s <= s_end) & (count > 0)
    return jax.tree.map(lambda v: jnp.where(inside, v, jnp.nan), y)


def interpolate_event_step(solver, event, s):
    """y at time s inside the step the event stopped in."""
    theta = (s - event["t_n"]) / jax.lax.stop_gradient(event["dt_n"])
    return solver.interpolate(event["info"], theta)


def injector(ct_dense, ct_event, event_step):
    """For the backward walks: ``inject(n) -> (ct_info_add, ct_y1_add)`` of accepted step n
    from the cotangents of the recorded buffers, and the total cotangent of the recorded start
    times (each t_n = ts[0] + a sum of step sizes held constant, so it goes to ts[0])."""
    g_t0 = jnp.zeros(())
    have_dense = ct_dense is not None and jax.tree.leaves(ct_dense)
    have_event = ct_event is not None and jax.tree.leaves(ct_event)
    if have_dense:
        g_t0 = g_t0 + jnp.sum(ct_dense["t"])
    if have_event:
        g_t0 = g_t0 + ct_event["t_n"]
    if not (have_dense or have_event):
        return None, g_t0

    def inject(n, info_like, y_like):
        ct_info = jax.tree.map(jnp.zeros_like, info_like)
        ct_y1 = jax.tree.map(jnp.zeros_like, y_like)
        if have_dense:
            ct_info = jax.tree.map(lambda a, b: a + b[n], ct_info, ct_dense["info"])
            ct_y1 = jax.tree.map(lambda a, b: a + b[n], ct_y1, ct_dense["y1"])
        if have_event:
            here = n == event_step
            add = tree_where(here, ct_event["info"], jax.tree.map(jnp.zeros_like, info_like))
            ct_info = jax.tree.map(lambda a, b: a + b, ct_info, add)
        return ct_info, ct_y1

    return inject, g_t0
