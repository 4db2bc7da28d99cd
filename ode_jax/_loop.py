"""The one adaptive stepping loop: a ``lax.while_loop`` over a state pytree.

Integration always runs forwards in time here (``ts`` strictly increasing); ``odeint`` maps a
backwards solve onto this by flipping the sign of time. Outputs are written with the solver's
dense output, so steps need not land on the output times (fixed-step methods do land on them).
The loop talks to the method only through :class:`ode_jax.AbstractSolver`.

With more than one output after ts[0] the outputs are written in blocks of rows outside the
stepping loop, which carries the last step's dense information instead (see the end of
:func:`integrate`). XLA:CPU then runs the stepping loop's kernels sequentially or, for a tiny
system, compiles it into a single kernel ("Small systems on the CPU" in docs/benchmarks.md).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp

from ._control import PIDController, initial_step, scaled_error
from ._event import Event, find_root
from ._solution import RESULTS
from ._solver import AbstractSolver, all_finite, tree_where


class Tolerances(eqx.Module):
    """The numbers that steer a solve; arrays, so they may be traced (and vmapped).

    ``dt0``: the first step size (adaptive) or the step size (fixed-step); None: Hairer's
    initial step. ``dtmax``: an upper bound on every step size, or None.
    """

    rtol: jax.Array
    atol: jax.Array
    dt0: jax.Array | None = None
    dtmax: jax.Array | None = None


class Recorder:
    """Hooks that let an adjoint record what it needs of the forward solve (no-ops here)."""

    def init(self, y0, ts, saved):
        """``saved``: the solver's :meth:`~ode_jax.AbstractSolver.checkpoint_state` at t0."""
        return None

    def on_accept(self, aux, accept, step, t, dt, y, saved):
        """Called for every attempted step; ``accept`` says whether step number ``step``
        (0-based count of accepted steps) from (t, y) with size dt was accepted. ``saved``: the
        solver's checkpoint state before the step."""
        return aux

    def on_output(self, aux, index, step):
        """Called when output ``index`` is written from accepted step ``step``."""
        return aux

    def on_state(self, aux, y, saved):
        """Called at the end of every attempted step with the state after the last accepted
        step (y, not truncated by an event, and the solver's checkpoint state)."""
        return aux


class _State(eqx.Module):
    t: jax.Array
    y: Any
    dt: jax.Array
    solver_state: Any
    prev_err: jax.Array
    last: tuple | None  # (scaled error, step size) of the last attempt; None: not used
    index: jax.Array  # next output to write
    ys: Any  # the output buffers; None while stepping between outputs (see integrate)
    nfe: jax.Array
    num_steps: jax.Array
    num_accepted: jax.Array  # (rejected steps: num_steps - num_accepted, after the loop)
    rejected: jax.Array  # the last attempted step was rejected
    nonfinite: jax.Array  # the last rejection was caused by a non-finite error estimate
    result: jax.Array
    aux: Any
    dense: Any  # per accepted step: t, dt, the step's dense info, y1 (None unless asked for)
    event: Any  # g at the current state, and what is known of the event (None: no event)
    # The last attempted step (the last accepted one when outputs are written): its start time
    # "t", dense "info", and with an event its size "dt". None when the only output is t_end.
    last_step: Any = None


class LoopOutput(eqx.Module):
    """What :func:`integrate` returns.

    ``dense``: None, or a dict of per-accepted-step buffers of length ``max_steps + 1`` (the
    last slot is scratch): "t" (start time), "dt", "info" (the solver's dense info), "y1"
    (the step's end state). ``event``: None, or a dict with "time", "state", "happened",
    "step" (the accepted step it happened in), "t_n", "dt_n" and "info" of that step.
    """

    ys: Any
    stats: dict
    result: jax.Array
    aux: Any
    dt_next: jax.Array
    dense: Any = None
    event: Any = None


def _is_none(x) -> bool:
    return x is None


def integrate(
    solver: AbstractSolver,
    f: Callable,
    y0,
    ts: jax.Array,
    args,
    tols: Tolerances,
    *,
    max_steps: int,
    controller: PIDController,
    norm: Callable,
    recorder: Recorder | None = None,
    dense: bool = False,
    event: Event | None = None,
    cond_fn: Callable | None = None,
) -> LoopOutput:
    """Solve from ts[0] to ts[-1] (strictly increasing).

    ``dense``: record every accepted step's dense output. ``event`` with ``cond_fn(t, y,
    args)``: stop at the first crossing of zero (see :mod:`ode_jax._event`); outputs after it
    are left NaN here (odeint fills them with the event state).

    Returns a :class:`LoopOutput`; its dt_next is the step size proposed after the last step
    (a good dt0 for a solve that continues from ts[-1]).
    """
    recorder = recorder or Recorder()
    tdtype = ts.dtype
    n_out = ts.shape[0]
    t0, t_end = ts[0], ts[-1]
    eps = jnp.finfo(tdtype).eps
    i32 = jnp.int32
    rtol, atol, dt0, dtmax = tols.rtol, tols.atol, tols.dt0, tols.dtmax

    def cap(dt):
        return dt if dtmax is None else jnp.minimum(dt, dtmax.astype(tdtype))

    def init_ys(leaf):
        buf = jnp.full((n_out,) + leaf.shape, jnp.nan, leaf.dtype)
        return buf.at[0].set(leaf)

    ys = jax.tree.map(init_ys, y0)
    if n_out == 1:  # nothing to integrate: no evaluations of f at all
        zero = jnp.asarray(0, i32)
        stats = dict.fromkeys(("nfe", "num_steps", "num_accepted", "num_rejected"), zero)
        ok = jnp.asarray(RESULTS.successful, i32)
        dt_next = jnp.asarray(jnp.nan if dt0 is None else dt0, tdtype)
        return LoopOutput(ys, stats, ok, recorder.init(y0, ts, None), dt_next)
    nfe = jnp.asarray(0, i32)
    f0 = None
    if solver.adaptive and dt0 is None:
        f0 = f(t0, y0, args)
        dt_init = initial_step(f, t0, y0, args, f0, solver.order, rtol, atol, norm)
        nfe = nfe + 2
    else:
        dt_init = jnp.asarray(dt0, tdtype)
    extra = {"tols": tols} if solver.needs_tolerances else {}
    solver_state, n_init = solver.init(f, t0, y0, args, f0, **extra)
    if n_out == 2:
        # A zero-length solve (ts[0] == ts[1]) takes no step: its end is its start.
        ys = jax.tree.map(lambda buf, v: buf.at[1].set(jnp.where(t_end <= t0, v, buf[1])), ys, y0)
    dense_bufs = event_state = last_step = None
    if dense or event is not None or n_out > 2:
        info_shape = jax.eval_shape(
            lambda: solver.step(f, t0, y0, jnp.asarray(dt_init, tdtype), args, solver_state)[2]
        )
    if dense:
        m = max_steps + 1

        def buffer(x):
            return jnp.zeros((m,) + x.shape, x.dtype)

        dense_bufs = dict(
            t=jnp.zeros((m,), tdtype),
            dt=jnp.zeros((m,), tdtype),
            info=jax.tree.map(buffer, info_shape),
            y1=jax.tree.map(buffer, y0),
        )
    if event is not None or n_out > 2:
        zeros_info = jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), info_shape)
    if n_out > 2:
        last_step = dict(t=t0, info=zeros_info)
        if event is not None:
            last_step["dt"] = jnp.ones((), tdtype)
    if event is not None:
        event_state = dict(
            g=jnp.asarray(cond_fn(t0, y0, args)),
            time=jnp.asarray(jnp.inf, tdtype),
            state=y0,
            happened=jnp.asarray(False),
            step=jnp.asarray(-1, i32),
            t_n=t0,
            dt_n=jnp.ones((), tdtype),
            info=zeros_info,
        )

    state = _State(
        t=t0,
        y=y0,
        dt=cap(jnp.asarray(dt_init, tdtype)),
        solver_state=solver_state,
        prev_err=jnp.ones((), tdtype),
        # Carried only for an adaptive solve whose controller reads it (it costs a few ns per
        # step, about 10% of a step of a 2-dimensional system).
        last=(
            (jnp.ones((), tdtype), jnp.ones((), tdtype))
            if solver.adaptive and getattr(controller, "observed_order", False) is True
            else None
        ),
        index=jnp.asarray(1, i32),
        ys=ys,
        nfe=(nfe + n_init).astype(i32),
        num_steps=jnp.asarray(0, i32),
        num_accepted=jnp.asarray(0, i32),
        rejected=jnp.asarray(False),
        nonfinite=jnp.asarray(False),
        result=jnp.asarray(RESULTS.successful, i32),
        aux=recorder.init(y0, ts, solver.checkpoint_state(solver_state)),
        dense=dense_bufs,
        event=event_state,
        last_step=last_step,
    )

    def next_time(index):
        """ts[index], clamped to the last output (index runs up to n_out)."""
        return ts[jnp.minimum(index, n_out - 1)]

    def cond(s):
        going = (s.t < t_end) & (s.result == RESULTS.successful) & (s.num_steps < max_steps)
        return going if event is None else going & ~s.event["happened"]

    def detect_event(s, accept, t1, y1, info, dt):
        """(event dict, whether it fired in this step, the step's effective end (t, y))."""
        ev = s.event
        g1 = jnp.asarray(cond_fn(t1, y1, args)).astype(ev["g"].dtype)
        fired = accept & event.crossed(ev["g"], g1)

        def h(theta):
            return cond_fn(s.t + theta * dt, solver.interpolate(info, theta), args)

        # The root finder runs only in the step where the event fires.
        theta = jax.lax.cond(
            fired,
            lambda: find_root(h, ev["g"], g1, tdtype),
            lambda: jnp.ones((), tdtype),
        )
        t_ev = jnp.where(theta >= 1, t1, s.t + theta * dt)
        y_ev = tree_where(theta >= 1, y1, solver.interpolate(info, theta))
        new = dict(
            g=jnp.where(accept, g1, ev["g"]),
            time=jnp.where(fired, t_ev, ev["time"]),
            state=tree_where(fired, y_ev, ev["state"]),
            happened=ev["happened"] | fired,
            step=jnp.where(fired, s.num_accepted, ev["step"]),
            t_n=jnp.where(fired, s.t, ev["t_n"]),
            dt_n=jnp.where(fired, dt, ev["dt_n"]),
            info=tree_where(fired, info, ev["info"]),
        )
        return new, fired, jnp.where(fired, t_ev, t1), tree_where(fired, y_ev, y1)

    def record_dense(bufs, accept, step, t, dt, info, y1):
        slot = jnp.where(accept, step, max_steps)

        def put(buf, v):
            return buf.at[slot].set(v)

        return dict(
            t=put(bufs["t"], t),
            dt=put(bufs["dt"], dt),
            info=jax.tree.map(put, bufs["info"], info),
            y1=jax.tree.map(put, bufs["y1"], y1),
        )

    def write_end(s, accept, aux, t1, y1):
        """With ts = [t0, t_end]: write t_end when the step lands there. The last step lands
        exactly (see body): no dense output and no loop over outputs in the program. Every
        backward solve of the continuous adjoint and every ODE block is such a solve."""
        done = accept & (t1 >= t_end)
        ys = jax.tree.map(lambda buf, v: buf.at[1].set(jnp.where(done, v, buf[1])), s.ys, y1)
        aux = tree_where(done, recorder.on_output(aux, 1, s.num_accepted), aux)
        return jnp.where(done, 2, s.index).astype(i32), ys, aux

    def write_passed(s, block, start, stop):
        """Write every output the last accepted step passed, up to output ``stop`` (excluded),
        from its dense output (its end point itself: s.y, which an event may have truncated),
        into ``block``, whose row 0 is output ``start``."""
        last = s.last_step
        # Without an event the step ended at s.t = t_prev + dt, with dt computed as exactly
        # this difference: recomputing it saves carrying it through the stepping loop.
        dt = last["dt"] if "dt" in last else s.t - last["t"]
        step = s.num_accepted - 1

        def out_cond(c):
            index, _, _ = c
            return (index < stop) & (next_time(index) <= s.t)

        def out_body(c):
            index, block, aux = c
            t_out = ts[index]
            theta = (t_out - last["t"]) / dt
            val = tree_where(t_out >= s.t, s.y, solver.interpolate(last["info"], theta))
            block = jax.tree.map(lambda buf, v: buf.at[index - start].set(v), block, val)
            aux = recorder.on_output(aux, index, step)
            return index + 1, block, aux

        return jax.lax.while_loop(out_cond, out_body, (s.index, block, s.aux))

    def body(s):
        # Fixed-step methods step to every output time; adaptive ones only to the end (outputs
        # in between come from the dense output). A step that would stop just short of its
        # target (by rounding, or by under 1% of the step, as in Hairer's DOPRI5) is stretched
        # onto it, rather than leaving a sliver of a step to take next: its error grows by
        # about 1.01**order (5% for dopri5).
        target = t_end if solver.adaptive else next_time(s.index)
        t1 = s.t + s.dt
        slack = jnp.maximum(1e-2 * s.dt, 100 * eps * jnp.abs(target))
        t1 = jnp.where(t1 >= target - slack, target, t1)
        dt = t1 - s.t
        y1, y_err, info, new_solver_state, n_step = solver.step(
            f, s.t, s.y, dt, args, s.solver_state
        )
        nfe = s.nfe + jnp.asarray(n_step).astype(i32)

        if solver.adaptive:
            err = scaled_error(s.y, y1, y_err, rtol, atol, norm).astype(tdtype)
            # An infinite y1 can come with a finite (even zero) scaled error: reject it too.
            # scaled_error makes the error NaN then, for norms that propagate it (ours do).
            finite = jnp.isfinite(err)
            if not getattr(norm, "propagates_nonfinite", False):
                finite = finite & all_finite(y1)
            accept = finite & (err <= 1.0)
            last = None if s.last is None else (s.last[0], s.last[1] / dt)
            factor = controller.factor(err, s.prev_err, accept, solver.order, s.rejected, last)
            dt_next = (dt * factor).astype(tdtype)
            # The last step is usually cut short to end on t_end; the step size handed back
            # (Solution.dt_next, to start a following solve) should not inherit that cut.
            landed = accept & (t1 >= t_end)
            dt_next = cap(jnp.where(landed, jnp.maximum(dt_next, s.dt), dt_next))
            prev_err = jnp.where(accept, err, s.prev_err)
            # The smallest step that still moves t: relative to the current time (not to the
            # end of the interval, which in float32 over a long horizon would forbid the small
            # steps a fast transient near t0 needs), and near t = 0 to a millionth of the
            # interval, so that a hopeless solve still stops in a few dozen rejections.
            tiny = 16 * eps * jnp.maximum(jnp.abs(s.t), 1e-6 * (t_end - t0))
            # Written so that a NaN step size (e.g. f(t0, y0) is NaN) also counts as underflow.
            underflow = (~accept) & ~(dt_next >= tiny)
            failed = jnp.where(
                ~finite | s.nonfinite, RESULTS.nonfinite, RESULTS.step_size_underflow
            )
            why = solver.failure(new_solver_state)
            failed = jnp.where(why != 0, why, failed)
            result = jnp.where(underflow, failed, s.result).astype(i32)
            nonfinite = jnp.where(accept, False, ~finite)
        else:
            finite = all_finite(y1)
            accept = finite
            dt_next = s.dt
            prev_err = s.prev_err
            result = jnp.where(finite, s.result, RESULTS.nonfinite).astype(i32)
            nonfinite = ~finite

        saved = solver.checkpoint_state(s.solver_state)
        aux = recorder.on_accept(s.aux, accept, s.num_accepted, s.t, dt, s.y, saved)
        ev, t_stop, y_stop = s.event, t1, y1
        if event is not None:
            ev, _, t_stop, y_stop = detect_event(s, accept, t1, y1, info, dt)
        index, ys, last_step = s.index, s.ys, s.last_step
        if n_out == 2:
            index, ys, aux = write_end(s, accept, aux, t_stop, y_stop)
        else:
            # The last attempt, accepted or not: the inner loop stops after the step that passes
            # an output, which is then the last attempt (no select needed to keep it).
            last_step = dict(t=s.t, info=info)
            if event is not None:  # the step's end may be an event time: keep its size
                last_step["dt"] = dt
        dense_bufs = s.dense
        if dense:
            dense_bufs = record_dense(s.dense, accept, s.num_accepted, s.t, dt, info, y1)
        y_next = tree_where(accept, y_stop, s.y)
        solver_state = solver.select_state(accept, s.solver_state, new_solver_state, info)
        # The state at the end of the last accepted step, before an event truncates it: the
        # reversible adjoint inverts steps from there.
        y_full = tree_where(accept, y1, s.y)
        aux = recorder.on_state(aux, y_full, solver.checkpoint_state(solver_state))
        return _State(
            t=jnp.where(accept, t_stop, s.t),
            y=y_next,
            dt=dt_next,
            solver_state=solver_state,
            prev_err=prev_err,
            last=None if s.last is None else (err, dt),
            index=index,
            ys=ys,
            nfe=nfe,
            num_steps=s.num_steps + 1,
            num_accepted=s.num_accepted + accept.astype(i32),
            rejected=~accept,
            nonfinite=nonfinite,
            result=result,
            aux=aux,
            dense=dense_bufs,
            event=ev,
            last_step=last_step,
        )

    if n_out == 2:
        state = jax.lax.while_loop(cond, body, state)
    else:
        # Three loops. The outputs after ts[0] go in blocks of up to 64 rows (a loop with a
        # fixed trip count); within a block, the middle loop writes the outputs each passing
        # step reached into the block, and the inner loop steps until a step passes the next
        # output. The stepping loop carries no output buffer and the block is small: on XLA:CPU
        # a loop body that touches a buffer over 512 bytes runs kernel by kernel through a
        # dataflow executor, and a tiny system's stepping loop can be compiled into a single
        # kernel (docs/benchmarks.md, "Small systems on the CPU"). Under vmap every member
        # writes the same rows of the output buffers (no scatter), and only the small block is
        # selected member by member while members step.
        n_blocks = -(-(n_out - 1) // 64)
        size = -(-(n_out - 1) // n_blocks)  # at most 64 rows; fewer than n_blocks rows of padding

        def step_cond(s):
            return cond(s) & (s.t < next_time(s.index))

        def block_body(k, c):
            s, ys = c
            start = 1 + k * size
            stop = jnp.minimum(start + size, n_out)

            def write_cond(c):
                s, _ = c
                pending = next_time(s.index) <= s.t
                return (s.index < stop) & (cond(s) | pending)

            def write_body(c):
                s, block = c
                s = jax.lax.while_loop(step_cond, body, s)
                index, block, aux = write_passed(s, block, start, stop)
                new = eqx.tree_at(lambda x: (x.index, x.aux), s, (index, aux), is_leaf=_is_none)
                return new, block

            block = jax.tree.map(lambda buf: jax.lax.dynamic_slice_in_dim(buf, start, size), ys)
            s, block = jax.lax.while_loop(write_cond, write_body, (s, block))
            ys = jax.tree.map(
                lambda buf, b: jax.lax.dynamic_update_slice_in_dim(buf, b, start, 0), ys, block
            )
            return s, ys

        # Room for whole blocks: rows past the last output are cut off at the end.
        pad = 1 + n_blocks * size - n_out
        ys = jax.tree.map(
            lambda buf: jnp.pad(buf, [(0, pad)] + [(0, 0)] * (buf.ndim - 1)), state.ys
        )
        state = eqx.tree_at(lambda x: x.ys, state, None)
        state, ys = jax.lax.fori_loop(0, n_blocks, block_body, (state, ys))
        ys = jax.tree.map(lambda buf: buf[:n_out], ys)
        state = eqx.tree_at(lambda x: x.ys, state, ys, is_leaf=_is_none)
    short = (state.result == RESULTS.successful) & (state.t < t_end)
    if event is not None:
        short = short & ~state.event["happened"]
    result = jnp.where(short, RESULTS.max_steps_reached, state.result).astype(i32)
    stats = {
        "nfe": state.nfe,
        "num_steps": state.num_steps,
        "num_accepted": state.num_accepted,
        "num_rejected": state.num_steps - state.num_accepted,
        **solver.counters(state.solver_state),
    }
    ev = state.event
    if ev is not None:
        ev = {k: v for k, v in ev.items() if k != "g"}
    return LoopOutput(state.ys, stats, result, state.aux, state.dt, state.dense, ev)
