"""The discrete adjoint: the exact gradient of the computed solution.

The forward loop records every accepted step's (t, dt) and a thinned set of states; the
backward pass walks the steps in reverse, recomputing each step from its segment's checkpoint
and pulling cotangents back through it with the solver's own step VJP (and through every dense
output written from it). Step sizes are held fixed: this is the gradient of the computed map for
the accepted step sequence.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from ._adjoint import (
    AbstractAdjoint,
    LoopOptions,
    Solved,
    defvjp_marking_times,
    end_cotangent,
    end_only,
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
    "ode_jax: the discrete adjoint (adjoint='discrete') can be differentiated twice only for "
    "solves without dense output, save_steps or events, with a solver whose steps JAX can "
    "differentiate (no Newton iterations): {why}. Use adjoint='continuous' "
    "(ode_jax.ContinuousAdjoint()) for grad-of-grad, Hessians and Hessian-vector products there"
)


class DiscreteAdjoint(AbstractAdjoint):
    """Exact gradients of the computed solution by a reverse walk over the accepted steps.

    Args:
        checkpoints: how many states the forward pass stores (default about
            sqrt(max_steps) / 2, 32 at max_steps 4096); a solve with more steps recomputes
            segments from them, exactly.
        keep_stages: whether pulling back through a step keeps that step's stage
            intermediates (one ``jax.vjp`` of the whole step: its stages are evaluated once)
            or recomputes the stages and walks them back one by one (two evaluations per stage,
            one copy of f's VJP in the program: less memory, shorter compilation). None
            (default) and True keep them, as reverse mode through one step does (diffrax's
            RecursiveCheckpointAdjoint keeps them too); False recomputes them. Only explicit
            Runge-Kutta methods with unrolled stages (the default layout) can keep them; the
            gradient is the same either way.

    Memory: the accepted (t, dt) of up to ``max_steps`` steps, ``checkpoints`` states, a
    buffer of ``max_steps / checkpoints / 4`` recomputed states (as many as the checkpoints
    by default), and one step's stage intermediates (one stage's with ``keep_stages=False``).
    The backward pass walks each segment between two checkpoints back in chunks that fit the
    buffer, the last chunk first, each recomputed from the segment's checkpoint: a solve of up
    to ``max_steps / 4`` steps reruns each step at most once; longer ones rerun up to 2.5 times
    as many steps (a segment of 4 chunks reruns 1 + 2 + 3 + 4 of them). On benchmark (b) (a
    128x6x6x64 state, 4096 max_steps) that is 182 MB of XLA temporaries (125 MB with
    ``keep_stages=False``), against 309 MB for diffrax's RecursiveCheckpointAdjoint.

    Differentiable twice (``jax.hessian``, ``jax.jacrev(jax.grad(...))``, HVPs by
    ``jax.jvp`` of ``jax.grad``) unless the solve has dense output or an event or uses an ESDIRK
    solver; second derivatives run the same steps as scans of ``max_steps`` iterations.
    """

    checkpoints: int | None = None
    keep_stages: bool | None = None

    def __post_init__(self):
        positive_or_none(
            "DiscreteAdjoint", "checkpoints", self.checkpoints, integer=True, minimum=2
        )
        if not any(self.keep_stages is v for v in (None, True, False)):
            raise ValueError(
                f"DiscreteAdjoint: keep_stages={self.keep_stages!r} must be None, True or False"
            )

    def solve(self, f, y0, ts, args, tols, probe, options: LoopOptions):
        vf, diff = split_field(f, y0, ts, args, event_cond(options), options.jacobian)
        n_ck, n_local, n_chunk = checkpoint_sizes(options.max_steps, self.checkpoints)
        solver = options.solver

        def record(y0, ts, d, tols):
            out = run_loop(vf, y0, ts, d, tols, options, StepRecorder(options.max_steps, n_ck))
            return outputs(out), out.aux, event_step(out)

        def backward(res, cts):
            *res, times = res
            end = end_only(ts, options, times)
            return discrete_backward(vf, solver, n_chunk, tuple(res), cts, self.keep_stages, end)

        why = _why_not_twice(options)
        if why:
            backward = not_differentiable_twice(backward, _TWICE.format(why=why))
        else:
            record, backward = _twice_differentiable(vf, solver, n_ck, n_local, record, backward)

        @jax.custom_vjp
        def core(y0, ts, d, tols, probe):
            return outputs(run_loop(vf, y0, ts, d, tols, options))

        def core_fwd(y0, ts, d, tols, probe):
            # `record` (not the loop itself): under a second derivative it is a custom_jvp
            # rule whose tangents are those of the solve with its steps held fixed.
            outs, aux, ev = record(y0, ts, d, tols)
            return outs, (y0, ts, d, tols, probe, outs[1], aux, ev)

        defvjp_marking_times(core, core_fwd, backward)
        return Solved.from_core(core(y0, ts, diff, tols, probe), vf, diff, y0, ts, options)


def _why_not_twice(options: LoopOptions) -> str:
    """Why this solve's discrete adjoint cannot be differentiated twice ("" if it can)."""
    if options.dense:
        return "this solve records dense output (dense=True or save_steps=True)"
    if options.event is not None:
        return "this solve has an event"
    if not options.solver.differentiable_steps:
        return f"solver {options.solver.name!r} iterates to convergence within a step"
    return ""


def _twice_differentiable(vf, solver, n_ck, n_local, record, backward):
    """``record`` and ``backward`` with JVP rules, so that the discrete adjoint can be
    differentiated again (reverse over reverse, forward over reverse).

    Their primal computations stay the fast ones (the adaptive loop, the backward walk of
    run-time length, neither differentiable by JAX in reverse mode). Their tangents are those of
    :func:`fixed_step_map`, the same computed map written with scans of fixed length, which JAX
    differentiates in every mode: the tangent of the solution, and the tangent of its VJP.
    """

    def solution_map(recorded, y0, ts, d):
        aux, n_acc = recorded
        return fixed_step_map(solver, vf, n_ck, n_local, aux, n_acc, y0, ts, d)

    @jax.custom_jvp
    def record2(y0, ts, d, tols):
        return record(y0, ts, d, tols)

    @record2.defjvp
    def record_jvp(primals, tangents):
        y0, ts, d, _ = primals
        out = record2(*primals)
        recorded = (out[1], out[0][1]["num_accepted"])
        _, t_ys = jax.jvp(functools.partial(solution_map, recorded), (y0, ts, d), tangents[:3])
        t_out = _zero_tangents(out)
        return out, ((t_ys, *t_out[0][1:]), *t_out[1:])

    @jax.custom_jvp
    def backward2(res, cts):
        return backward(res, cts)

    @backward2.defjvp
    def backward_jvp(primals, tangents):
        (y0, ts, d, *_rest), cts = primals
        recorded = (primals[0][6], primals[0][5]["num_accepted"])
        (ty0, tts, td, *_), t_cts = tangents
        out = backward2(*primals)

        def pull(y0, ts, d, g_ys):
            _, vjp = jax.vjp(functools.partial(solution_map, recorded), y0, ts, d)
            return vjp(g_ys)

        _, (ta_y, tg_ts, ta_d) = jax.jvp(pull, (y0, ts, d, cts[0]), (ty0, tts, td, t_cts[0]))
        t_out = _zero_tangents(out)
        return out, (ta_y, tg_ts, ta_d, *t_out[3:])

    return record2, backward2


def _zero_tangents(tree):
    """Zero tangents for a pytree of primal values (float0 for integer leaves)."""

    def zero(x):
        x = jnp.asarray(x)
        if jnp.issubdtype(x.dtype, jnp.inexact):
            return jnp.zeros_like(x)
        return np.zeros(x.shape, jax.dtypes.float0)

    return jax.tree.map(zero, tree)


def fixed_step_map(solver, vf, n_ck, n_local, aux, n_acc, y0, ts, d):
    """The outputs at ``ts`` of the ``n_acc`` recorded accepted steps (``aux`` of
    :class:`StepRecorder`) redone from (y0, ts, d) with their sizes held fixed: the map whose
    exact derivatives the discrete adjoint computes, written so that JAX can differentiate it
    to any order.

    The steps run in a scan of ``n_ck`` segments of ``n_local`` steps (each segment
    rematerialised in reverse mode: memory of ``n_ck`` states plus one segment's), steps past
    the last accepted one skipped by a ``cond``. Step n starts at ``ts[0] + (t_n - t_0)``. Each
    output is then interpolated from its step, redone from the state stored at the step's
    start. Outputs never written (after a failure) are 0 here, with zero derivative.
    """
    step_t, step_dt, out_step = aux["step_t"], aux["step_dt"], aux["out_step"]
    n_steps = step_t.shape[0] - 1
    n_out = ts.shape[0]
    if n_out == 1:
        return jax.tree.map(lambda y: y[None], y0)
    # Offsets of the recorded step times from ts[0] are constants; ts[0] itself is not.
    offset = jax.lax.stop_gradient(step_t - ts[0])
    written = out_step[1:] >= 0
    # For each output after ts[0], the step it is written from; unwritten ones sort last.
    key = jnp.where(written, out_step[1:], jnp.iinfo(jnp.int32).max)
    saved0 = solver.checkpoint_state(solver.init(vf, ts[0], y0, d)[0])
    # Row i: the state at the start of the step that writes output i + 1 (first of its
    # outputs); the last row is scratch for steps that write none.
    bufs = jax.tree.map(lambda v: jnp.zeros((n_out,) + jnp.shape(v), v.dtype), (y0, saved0))

    def one_step(carry, n):
        def run(c):
            y, saved, bufs = c
            row = jnp.searchsorted(key, n, side="left").astype(jnp.int32)
            has = key[jnp.minimum(row, n_out - 2)] == n
            row = jnp.where(has, row, n_out - 1)
            bufs = jax.tree.map(lambda b, v: b.at[row].set(v), bufs, (y, saved))
            k = jnp.minimum(n, n_steps - 1)
            y1, _, saved1 = solver.fixed_step(vf, ts[0] + offset[k], y, step_dt[k], d, saved)
            return y1, saved1, bufs

        return jax.lax.cond(n < n_acc, run, lambda c: c, carry), None

    @jax.checkpoint
    def segment(carry, j):
        carry, _ = jax.lax.scan(one_step, carry, j * n_local + jnp.arange(n_local, dtype=jnp.int32))
        return carry, None

    (_, _, bufs), _ = jax.lax.scan(segment, (y0, saved0, bufs), jnp.arange(n_ck, dtype=jnp.int32))

    def one_output(t_out, n, row):
        y_n, saved_n = tree_take(bufs, row)
        t_n = ts[0] + offset[n]
        _, info, _ = solver.fixed_step(vf, t_n, y_n, step_dt[n], d, saved_n)
        return solver.interpolate(info, (t_out - t_n) / step_dt[n])

    steps = jnp.maximum(out_step[1:], 0)
    rows = jnp.searchsorted(key, steps, side="left").astype(jnp.int32)
    rows = jnp.minimum(rows, n_out - 2)
    ys = jax.vmap(one_output)(ts[1:], steps, rows)
    ys = jax.tree.map(lambda v: jnp.where(written.reshape((-1,) + (1,) * (v.ndim - 1)), v, 0.0), ys)
    return jax.tree.map(lambda a, b: jnp.concatenate([a[None], b]), y0, ys)


def checkpoint_sizes(max_steps: int, checkpoints: int | None):
    """(number of stored states K, longest segment S, chunk C), K * S >= max_steps.

    The backward walk recomputes a segment in chunks of C = S / 4 states, so its buffers
    hold K + C states; the default K, about sqrt(max_steps) / 2, makes the two equal, the
    least memory for those chunks (65 states at max_steps 4096)."""
    if checkpoints is None:
        checkpoints = 2 ** max(1, math.ceil(math.log2(math.sqrt(max_steps))) - 1)
    k = 2 ** max(1, math.ceil(math.log2(checkpoints)))  # power of two: thinning halves it
    k = min(k, 2 ** max(1, math.ceil(math.log2(max_steps))))
    s = 1
    while k * s < max_steps:
        s *= 2
    return k, s, max(1, s // 4)


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
    solver, vf, d, ts, g_ys, out_step, n, t_n, dt_n, y_n, saved_n, carry, inject=None,
    memory=None, outputs=True,
):  # fmt: skip
    """Pull the cotangents of accepted step n (from (t_n, y_n, saved_n), size dt_n) and of the
    outputs written from it back to the step's start.

    ``carry``: ``(a_y, a_saved, a_d, g_ts, oi, nfe)``, the cotangents of the step's end state,
    of the parameters, of ts, the next output to pull back (walking down), and the count of
    evaluations. Shared by every adjoint that walks the steps backwards. ``inject(n, info,
    y)``: the cotangents of step n's recorded dense info and end state (dense output, events).
    ``memory``: bytes the step's VJP may keep alive (see
    :meth:`~ode_jax.AbstractSolver.linearize_step`). ``outputs=False``: no output is
    interpolated from any step and ts is not differentiated (``g_ts`` is left as it is), so
    neither the outputs' loop nor the times' cotangents enter the program.
    """
    a_y, a_saved, a_d, g_ts, oi, nfe = carry
    if not outputs:
        info, pull, k1 = solver.linearize_step(vf, t_n, y_n, dt_n, d, saved_n, False, memory)
        gy, g_saved, gd, _, k2 = pull(a_y, a_saved, tree_zeros_like(info))
        return gy, g_saved, tree_add(a_d, gd), g_ts, oi, nfe + k1 + k2
    with_dense = _has_output(out_step, oi, n)
    if inject is not None:
        with_dense = jnp.asarray(True)  # the recorded dense info may carry a cotangent
    info, pull, k1 = solver.linearize_step(vf, t_n, y_n, dt_n, d, saved_n, with_dense, memory)
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
    gy, g_saved, gd, gt, k2 = pull(a_y, a_saved, ct_info)
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


def discrete_backward(vf, solver, n_chunk, res, cts, keep_stages=None, end_only=False):
    """Walk the accepted steps backwards: recompute each segment from its checkpoint, then
    for each step (last first) pull the cotangents of its outputs and of its end state back
    through :meth:`~ode_jax.AbstractSolver.interpolate` and the step's VJP
    (:meth:`~ode_jax.AbstractSolver.linearize_step`, whose memory allowance ``keep_stages``
    sets: see :class:`DiscreteAdjoint`).

    ``end_only``: ts = [t0, t1] is not differentiated and there is no dense output or event.
    Output 1 is then the last accepted step's end state, so its cotangent starts the walk,
    and no step interpolates (benchmark (a): gradient compile 1.91-1.94x -> 1.39-1.50x the
    best JAX anchor's)."""
    y0, ts, d, tols, probe, stats, aux, ev_step = res
    g_ys, ct_dense, ct_event = cts[0], cts[4], cts[5]
    inject, g_t0 = injector(ct_dense, ct_event, ev_step)
    n_acc = stats["num_accepted"]
    stride = aux["stride"]
    step_t, step_dt, ck, out_step = aux["step_t"], aux["step_dt"], aux["ck"], aux["out_step"]

    def segment(carry):
        # Segment j (steps start .. end - 1, from checkpoint j) is walked back in chunks of
        # at most n_chunk steps, the last chunk first. Each chunk's start states are
        # recomputed from the checkpoint into the chunk buffer (the steps before the chunk
        # are rerun without being stored), so a segment of C chunks reruns C(C+1)/2 chunks:
        # one when it fits the buffer, every segment of a solve of up to n_ck * n_chunk
        # steps.
        j, back, local = carry
        start = j * stride
        end = jnp.minimum(start + stride, n_acc)

        def chunk(c):
            q, back, local = c
            c_start = start + q * n_chunk
            c_end = jnp.minimum(c_start + n_chunk, end)
            y_j, saved_j = tree_take(ck, j)
            local = jax.tree.map(lambda buf, v: buf.at[0].set(v), local, (y_j, saved_j))

            def recompute(c):
                n, y_n, saved_n, local, nfe = c
                y1, _, saved1, k = solver.recompute(
                    vf, step_t[n], y_n, step_dt[n], d, saved_n, False
                )
                # States before the chunk go to slot 0, which the chunk's first state (step
                # c_start's start, computed last of them) then overwrites.
                slot = jnp.maximum(n + 1 - c_start, 0)
                local = jax.tree.map(lambda buf, v: buf.at[slot].set(v), local, (y1, saved1))
                return n + 1, y1, saved1, local, nfe + k

            init = (start, y_j, saved_j, local, back[-1])
            _, _, _, local, nfe = jax.lax.while_loop(lambda c: c[0] < c_end - 1, recompute, init)

            def walk(c):
                n, back = c
                y_n, saved_n = tree_take(local, n - c_start)
                back = pull_back_step(
                    solver, vf, d, ts, g_ys, out_step, n, step_t[n], step_dt[n], y_n, saved_n,
                    back, inject, memory, not end_only,
                )  # fmt: skip
                return n - 1, back

            back = (*back[:-1], nfe)
            _, back = jax.lax.while_loop(lambda c: c[0] >= c_start, walk, (c_end - 1, back))
            return q - 1, back, local

        n_chunks = (end - start + n_chunk - 1) // n_chunk
        _, back, local = jax.lax.while_loop(lambda c: c[0] >= 0, chunk, (n_chunks - 1, back, local))
        return j - 1, back, local

    n_seg = (n_acc + stride - 1) // stride
    y_ck, saved_ck = ck
    back = (
        end_cotangent(g_ys, out_step) if end_only else tree_zeros_like(y0),
        jax.tree.map(lambda b: jnp.zeros(b.shape[1:], b.dtype), saved_ck),
        tree_zeros_like(d),
        jnp.zeros_like(ts),
        last_written_output(out_step),
        jnp.asarray(0, jnp.int32),
    )
    # The states of the chunk being walked back, recomputed from its segment's checkpoint;
    # allocated once and carried, not re-zeroed per chunk.
    local = jax.tree.map(lambda b: jnp.zeros((n_chunk,) + b.shape[1:], b.dtype), ck)
    # None: a step's VJP keeps its stage intermediates (one step's worth, as reverse mode
    # through the step would); False: it recomputes them (see RungeKutta.linearize_step).
    memory = 0 if keep_stages is False else None
    _, back, _ = jax.lax.while_loop(lambda c: c[0] >= 0, segment, (n_seg - 1, back, local))
    a_y, a_saved, a_d, g_ts, _, nfe = back
    a_y, a_d, g_ts = pull_back_init(solver, vf, d, ts, y0, a_y, a_saved, a_d, g_ts)
    a_y = tree_add(a_y, tree_take(g_ys, 0))
    g_ts = g_ts.at[0].add(g_t0.astype(g_ts.dtype))
    probe_ct = stats_vector(dict(nfe=nfe, num_steps=n_acc, num_accepted=n_acc), probe)
    return a_y, g_ts, a_d, tree_zeros_like(tols), probe_ct


register_adjoint("discrete", DiscreteAdjoint)
