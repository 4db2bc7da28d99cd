"""The discrete adjoint: the exact gradient of the computed solution.

The forward loop records every accepted step's (t, dt) and a thinned set of states; the
backward pass walks the steps in reverse, recomputing each step from its segment's checkpoint
and pulling cotangents back through it with the solver's own step VJP (and through every dense
output written from it). Step sizes are held fixed: this is the gradient of the computed map for
the accepted step sequence.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from ._adjoint import (
    AbstractAdjoint,
    LoopOptions,
    Solved,
    event_cond,
    event_step,
    not_differentiable_twice,
    outputs,
    positive_or_none,
    register_adjoint,
    run_loop,
    split_field,
    stats_vector,
    tree_add,
    tree_take,
    tree_zeros_like,
)
from ._dense import injector
from ._loop import Recorder

_TWICE = (
    "ode_jax: the discrete adjoint (adjoint='discrete') cannot be differentiated twice (its "
    "backward pass walks a recorded step sequence of run-time length); use "
    "adjoint='continuous' (ode_jax.ContinuousAdjoint()) for grad-of-grad, Hessians and "
    "Hessian-vector products"
)


class DiscreteAdjoint(AbstractAdjoint):
    """Exact gradients of the computed solution by a reverse walk over the accepted steps.

    Args:
        checkpoints: how many states the forward pass stores (default about
            sqrt(max_steps)); a solve with more steps recomputes segments from them, exactly.

    Memory: the accepted (t, dt) of up to ``max_steps`` steps, ``checkpoints`` states and one
    segment of ``max_steps / checkpoints`` recomputed states.
    """

    checkpoints: int | None = None

    def __post_init__(self):
        positive_or_none(
            "DiscreteAdjoint", "checkpoints", self.checkpoints, integer=True, minimum=2
        )

    def solve(self, f, y0, ts, args, tols, probe, options: LoopOptions):
        vf, diff = split_field(f, y0, ts, args, event_cond(options), options.jacobian)
        n_ck, n_local = checkpoint_sizes(options.max_steps, self.checkpoints)

        @jax.custom_vjp
        def core(y0, ts, d, tols, probe):
            return outputs(run_loop(vf, y0, ts, d, tols, options))

        def core_fwd(y0, ts, d, tols, probe):
            recorder = StepRecorder(options.max_steps, n_ck)
            out = run_loop(vf, y0, ts, d, tols, options, recorder)
            res = (y0, ts, d, tols, probe, out.stats, out.aux, event_step(out))
            return outputs(out), res

        def backward(res, cts):
            return discrete_backward(vf, options.solver, n_local, res, cts)

        backward = not_differentiable_twice(backward, _TWICE)
        core.defvjp(core_fwd, backward)
        return Solved.from_core(core(y0, ts, diff, tols, probe), vf, diff, y0, ts, options)


def checkpoint_sizes(max_steps: int, checkpoints: int | None):
    """(number of stored states K, size S of the segment recompute buffer), K * S >= max_steps."""
    if checkpoints is None:
        checkpoints = 2 ** max(1, math.ceil(math.log2(math.sqrt(max_steps))))
    k = 2 ** max(1, math.ceil(math.log2(checkpoints)))  # power of two: thinning halves it
    k = min(k, 2 ** max(1, math.ceil(math.log2(max_steps))))
    s = 1
    while k * s < max_steps:
        s *= 2
    return k, s


class StepRecorder(Recorder):
    """Records (t, dt) of every accepted step and the state (y and the solver's checkpoint
    state) at every ``stride``-th one.

    When the K state slots fill up, every other one is dropped and the stride doubles, so any
    number of steps up to max_steps fits in K states (and segments of at most S = max_steps / K
    steps are recomputed in the backward pass).
    """

    def __init__(self, max_steps, n_ck):
        self.max_steps = max_steps
        self.n_ck = n_ck

    def init(self, y0, ts, saved):
        k = self.n_ck
        return dict(
            step_t=jnp.zeros((self.max_steps + 1,), ts.dtype),  # last slot: scratch for rejects
            step_dt=jnp.zeros((self.max_steps + 1,), ts.dtype),
            ck=jax.tree.map(lambda y: jnp.zeros((k + 1,) + y.shape, y.dtype), (y0, saved)),
            stride=jnp.asarray(1, jnp.int32),
            out_step=jnp.full((ts.shape[0],), -1, jnp.int32),  # -1: not written
        )

    def on_accept(self, aux, accept, step, t, dt, y, saved):
        k = self.n_ck
        slot_t = jnp.where(accept, step, self.max_steps)
        step_t = aux["step_t"].at[slot_t].set(t)
        step_dt = aux["step_dt"].at[slot_t].set(dt)
        stride = aux["stride"]
        store = accept & (step % stride == 0)
        thin = store & (step // stride == k)

        def thin_fn(ck_stride):
            ck, s = ck_stride
            ck = jax.tree.map(lambda b: b.at[: k // 2].set(b[0:k:2]), ck)
            return ck, s * 2

        ck, stride = jax.lax.cond(thin, thin_fn, lambda c: c, (aux["ck"], stride))
        slot = jnp.where(store, step // stride, k)  # slot k is scratch
        ck = jax.tree.map(lambda b, v: b.at[slot].set(v), ck, (y, saved))
        return dict(step_t=step_t, step_dt=step_dt, ck=ck, stride=stride, out_step=aux["out_step"])

    def on_output(self, aux, index, step):
        return {**aux, "out_step": aux["out_step"].at[index].set(step)}


def last_written_output(out_step):
    """The index of the last output a step wrote (outputs after an event or a failure were
    never written; ts[0] is output 0)."""
    return jnp.sum(out_step[1:] >= 0, dtype=jnp.int32)


def _has_output(out_step, oi, n):
    """Whether output ``oi`` (walked from the last down) was written from accepted step n."""
    return (oi >= 1) & (out_step[jnp.maximum(oi, 0)] == n)


def pull_back_step(
    solver, vf, d, ts, g_ys, out_step, n, t_n, dt_n, y_n, saved_n, carry, inject=None
):
    """Pull the cotangents of accepted step n (from (t_n, y_n, saved_n), size dt_n) and of the
    outputs written from it back to the step's start.

    ``carry``: ``(a_y, a_saved, a_d, g_ts, oi, nfe)``, the cotangents of the step's end state,
    of the parameters, of ts, the next output to pull back (walking down), and the count of
    evaluations. Shared by every adjoint that walks the steps backwards. ``inject(n, info,
    y)``: the cotangents of step n's recorded dense info and end state (dense output, events).
    """
    a_y, a_saved, a_d, g_ts, oi, nfe = carry
    with_dense = _has_output(out_step, oi, n)
    if inject is not None:
        with_dense = jnp.asarray(True)  # the recorded dense info may carry a cotangent
    _, info, _, k1 = solver.recompute(vf, t_n, y_n, dt_n, d, saved_n, with_dense)
    ct_info0 = tree_zeros_like(info)
    if inject is not None:
        ct_info0, ct_y1 = inject(n, info, a_y)
        a_y = tree_add(a_y, ct_y1)

    def out_body(c):
        # Output oi = interpolate(info, theta), theta = (ts[oi] - t_n) / dt_n.
        oi, ct_info, g_ts, g_tn = c
        theta = (ts[oi] - t_n) / dt_n
        ct_i, ct_theta = solver.interpolate_vjp(info, theta, tree_take(g_ys, oi))
        g_theta = (ct_theta / dt_n).astype(g_ts.dtype)  # dL/dts[oi]; t_n gets the negative
        return oi - 1, tree_add(ct_info, ct_i), g_ts.at[oi].add(g_theta), g_tn - g_theta

    init = (oi, ct_info0, g_ts, jnp.zeros((), ts.dtype))
    oi, ct_info, g_ts, g_tn = jax.lax.while_loop(
        lambda c: _has_output(out_step, c[0], n), out_body, init
    )
    gy, g_saved, gd, gt, k2 = solver.step_vjp(
        vf, t_n, y_n, dt_n, d, saved_n, info, a_y, a_saved, ct_info, with_dense
    )
    g_ts = g_ts.at[0].add((gt + g_tn).astype(g_ts.dtype))  # t_n = ts[0] + sum of dts
    return gy, g_saved, tree_add(a_d, gd), g_ts, oi, nfe + k1 + k2


def pull_back_init(solver, vf, d, ts, y0, a_y, a_saved, a_d, g_ts):
    """Add the cotangent of the solver's initial checkpoint state (e.g. a reversible solver's
    second state z0 = y0) to those of y0, the parameters and ts[0]."""
    if not jax.tree.leaves(a_saved):
        return a_y, a_d, g_ts

    def saved0(y_, d_, t_):
        return solver.checkpoint_state(solver.init(vf, t_, y_, d_)[0])

    _, pull = jax.vjp(saved0, y0, d, ts[0])
    gy, gd, gt = pull(a_saved)
    return tree_add(a_y, gy), tree_add(a_d, gd), g_ts.at[0].add(gt.astype(g_ts.dtype))


def discrete_backward(vf, solver, n_local, res, cts):
    """Walk the accepted steps backwards: recompute each segment from its checkpoint, then
    for each step (last first) pull the cotangents of its outputs and of its end state back
    through :meth:`~ode_jax.AbstractSolver.interpolate` and
    :meth:`~ode_jax.AbstractSolver.step_vjp`."""
    y0, ts, d, tols, probe, stats, aux, ev_step = res
    g_ys, ct_dense, ct_event = cts[0], cts[4], cts[5]
    inject, g_t0 = injector(ct_dense, ct_event, ev_step)
    n_acc = stats["num_accepted"]
    stride = aux["stride"]
    step_t, step_dt, ck, out_step = aux["step_t"], aux["step_dt"], aux["ck"], aux["out_step"]

    def segment(carry):
        j, back, local = carry
        start = j * stride
        end = jnp.minimum(start + stride, n_acc)
        local = jax.tree.map(lambda buf, b: buf.at[0].set(b[j]), local, ck)

        def recompute(c):
            m, local, nfe = c
            n = start + m - 1
            y_m, saved_m = tree_take(local, m - 1)
            y1, _, saved1, k = solver.recompute(
                vf, step_t[n], y_m, step_dt[n], d, saved_m, jnp.asarray(False)
            )
            local = jax.tree.map(lambda buf, v: buf.at[m].set(v), local, (y1, saved1))
            return m + 1, local, nfe + k

        _, local, nfe = jax.lax.while_loop(
            lambda c: c[0] < end - start, recompute, (1, local, back[-1])
        )

        def walk(c):
            n, back = c
            y_n, saved_n = tree_take(local, n - start)
            back = pull_back_step(
                solver, vf, d, ts, g_ys, out_step, n, step_t[n], step_dt[n], y_n, saved_n, back,
                inject,
            )  # fmt: skip
            return n - 1, back

        back = (*back[:-1], nfe)
        _, back = jax.lax.while_loop(lambda c: c[0] >= start, walk, (end - 1, back))
        return j - 1, back, local

    n_seg = (n_acc + stride - 1) // stride
    y_ck, saved_ck = ck
    back = (
        tree_zeros_like(y0),
        jax.tree.map(lambda b: jnp.zeros(b.shape[1:], b.dtype), saved_ck),
        tree_zeros_like(d),
        jnp.zeros_like(ts),
        last_written_output(out_step),
        jnp.asarray(0, jnp.int32),
    )
    # States of the segment being walked back, recomputed from its checkpoint; allocated once
    # and carried, not re-zeroed per segment.
    local = jax.tree.map(lambda b: jnp.zeros((n_local,) + b.shape[1:], b.dtype), ck)
    _, back, _ = jax.lax.while_loop(lambda c: c[0] >= 0, segment, (n_seg - 1, back, local))
    a_y, a_saved, a_d, g_ts, _, nfe = back
    a_y, a_d, g_ts = pull_back_init(solver, vf, d, ts, y0, a_y, a_saved, a_d, g_ts)
    a_y = tree_add(a_y, tree_take(g_ys, 0))
    g_ts = g_ts.at[0].add(g_t0.astype(g_ts.dtype))
    probe_ct = stats_vector(dict(nfe=nfe, num_steps=n_acc, num_accepted=n_acc), probe)
    return a_y, g_ts, a_d, tree_zeros_like(tols), probe_ct


register_adjoint("discrete", DiscreteAdjoint)
