"""The public entry point: validate input, map a backwards solve onto a forwards one, dispatch."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ._adjoint import PROBE_KEYS, AbstractAdjoint, LoopOptions, get_adjoint
from ._control import PIDController, rms_norm
from ._event import Event, differentiable_event_time
from ._loop import Tolerances
from ._solution import RESULTS, Solution, raise_if_failed
from ._solver import AbstractSolver, all_finite
from ._solvers import get_solver

# Keywords of earlier versions, now options of an adjoint object: a clear error, not a silent
# TypeError about an unexpected keyword.
_MOVED = {
    "adjoint_rtol": "ode_jax.ContinuousAdjoint(rtol=...)",
    "adjoint_atol": "ode_jax.ContinuousAdjoint(atol=...)",
    "adjoint_solver": "ode_jax.ContinuousAdjoint(solver=...)",
    "adjoint_max_steps": "ode_jax.ContinuousAdjoint(max_steps=...)",
    "seminorm": "ode_jax.ContinuousAdjoint(seminorm=True)",
    "checkpoints": "ode_jax.DiscreteAdjoint(checkpoints=...)",
}


def _is_concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


def _check_positive(name, value, *, allow_zero=False):
    """Trace-time check of a concrete scalar; traced values are checked at run time instead."""
    if value is None or not _is_concrete(value):
        return
    arr = np.asarray(value)
    if arr.ndim != 0:
        raise ValueError(f"{name} must be a scalar, got shape {arr.shape}")
    bad = not np.isfinite(arr) or (arr < 0 if allow_zero else arr <= 0)
    if bad:
        kind = "non-negative" if allow_zero else "positive"
        raise ValueError(f"{name} must be finite and {kind}, got {value!r}")


def _runtime_positive(name, value, tree):
    if value is None or _is_concrete(value):
        return tree
    bad = ~jnp.isfinite(value) | (value <= 0)
    return eqx.error_if(tree, bad, f"ode_jax.odeint: {name} must be finite and positive")


def _validate_y0(y0):
    leaves, treedef = jax.tree.flatten(y0)
    if not leaves:
        raise ValueError("y0 must contain at least one array")
    out = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(y0)[0]:
        arr = jnp.asarray(leaf)
        if not (
            jnp.issubdtype(arr.dtype, jnp.floating)
            or jnp.issubdtype(arr.dtype, jnp.complexfloating)
        ):
            where = jax.tree_util.keystr(path) or "(root)"
            raise TypeError(
                f"y0{where} has dtype {arr.dtype}; the state must be floating point or complex "
                "(use e.g. jnp.asarray(y0, float))"
            )
        out.append(arr)
    return jax.tree.unflatten(treedef, out)


def _validate_ts(ts):
    """(ts as a float array, its values as numpy when known at trace time, else None).

    Under jit, ``jnp.asarray`` of a numpy array is a tracer, so the values are read from the
    argument itself: numpy arrays, lists and concrete jax arrays are checked here, once, and
    decide the direction of integration statically; only traced ts are checked at run time.
    """
    given = ts
    ts = jnp.asarray(ts)
    if ts.ndim != 1 or ts.shape[0] < 1:
        raise ValueError(f"ts must be a 1-d array with at least one time, got shape {ts.shape}")
    if not jnp.issubdtype(ts.dtype, jnp.floating):
        if jnp.issubdtype(ts.dtype, jnp.complexfloating):
            raise TypeError("ts must be real, got a complex array")
        ts = ts.astype(jnp.result_type(float))
    traced = any(isinstance(x, jax.core.Tracer) for x in jax.tree.leaves(given))
    t = None if traced else np.asarray(given).astype(ts.dtype)
    if t is not None and t.shape[0] > 1:
        bad = np.flatnonzero(~np.isfinite(t))
        if bad.size:
            raise ValueError(f"ts must be finite, got ts[{bad[0]}]={t[bad[0]]}")
        # The first step sets the direction; name the first step that breaks it.
        steps = np.sign(np.diff(t))
        bad = np.flatnonzero((steps == 0) | (steps != steps[0]))
        if bad.size:
            i = bad[0] + 1
            start = "" if i == 1 else f", but ts starts {'in' if steps[0] > 0 else 'de'}creasing"
            raise ValueError(
                "ts must be strictly increasing or strictly decreasing; "
                f"ts[{i}]={t[i]} follows ts[{i - 1}]={t[i - 1]}{start}"
            )
    return ts, t


def _check_ts_runtime(ts, ts_np, tree):
    if ts_np is not None or ts.shape[0] < 2:
        return tree
    d = jnp.diff(ts)
    # Float reductions (min, max, sum), not boolean ones: see all_finite.
    bad = ~((jnp.min(d) > 0) | (jnp.max(d) < 0)) | ~all_finite(ts)
    return eqx.error_if(
        tree, bad, "ode_jax.odeint: ts must be finite and strictly increasing or decreasing"
    )


def _check_vector_field(f, t0, y0, args):
    try:
        out = eqx.filter_eval_shape(f, t0, y0, args)
    except Exception as e:
        # A note, not a new exception of the same type: many (e.g. JAX's tracer errors) cannot
        # be rebuilt from a message.
        e.add_note("(raised by ode_jax.odeint calling the vector field f(t, y, args) at ts[0])")
        raise
    y_struct = jax.tree.structure(y0)
    out_struct = jax.tree.structure(out)
    if y_struct != out_struct:
        raise ValueError(
            f"the vector field f(t, y, args) must return a pytree with the structure of y; "
            f"y has {y_struct}, f returned {out_struct}"
        )
    for path, y_leaf, o_leaf in zip(
        [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(y0)[0]],
        jax.tree.leaves(y0),
        jax.tree.leaves(out),
    ):
        if y_leaf.shape != o_leaf.shape:
            raise ValueError(
                f"the vector field f(t, y, args) returned shape {o_leaf.shape} for y{path}, "
                f"whose shape is {y_leaf.shape}"
            )
        if jnp.issubdtype(o_leaf.dtype, jnp.complexfloating) and not jnp.issubdtype(
            y_leaf.dtype, jnp.complexfloating
        ):
            raise TypeError(
                f"the vector field returned complex values ({o_leaf.dtype}) for the real state "
                f"y{path} ({y_leaf.dtype}); make y0 complex"
            )


def odeint(
    f: Callable,
    y0,
    ts,
    args: Any = None,
    *,
    solver: str | AbstractSolver = "tsit5",
    rtol=1e-6,
    atol=1e-8,
    dt0=None,
    dtmax=None,
    max_steps: int = 4096,
    controller: PIDController | None = None,
    norm: Callable | None = None,
    adjoint: str | AbstractAdjoint = "continuous",
    probe=None,
    throw: bool = True,
    dense: bool = False,
    save_steps: bool = False,
    event: Event | None = None,
    jacobian: Callable | None = None,
    **moved,
) -> Solution:
    """Solve dy/dt = f(t, y, args) from y(ts[0]) = y0 and return y at every time in ts.

    Args:
        f: vector field ``f(t, y, args) -> dy/dt``, a pytree shaped like ``y``.
        y0: initial state, any pytree of float (or complex) arrays.
        ts: 1-d array of output times, strictly increasing or strictly decreasing (a backwards
            solve); ``ts[0]`` is the initial time. Length 1 returns ``y0``. Prefer numpy
            arrays or lists for fixed times: they are checked when traced and fix the direction
            statically (a jax array built inside jit is a tracer, checked at run time, and
            makes a slightly larger program).
        args: any pytree passed to ``f`` (parameters: equinox modules welcome); gradients flow to
            its float arrays, and to float arrays ``f`` closes over.
        solver: a name from :data:`ode_jax.SOLVERS` ("euler", "midpoint", "heun", "rk4" take
            fixed steps and need ``dt0``; "bosh3", "dopri5", "tsit5", "dopri8" are adaptive) or
            a solver object (:class:`ode_jax.RungeKutta`, any :class:`ode_jax.AbstractSolver`).
        rtol, atol: relative/absolute tolerances (positive; may be traced values).
        dt0: initial step size magnitude (adaptive; default: Hairer's algorithm) or the step size
            (fixed-step methods, whose steps are shortened to land on every output time).
        dtmax: largest step size magnitude an adaptive solve may take (default: no bound).
        max_steps: bound on attempted steps of the forward solve.
        controller: :class:`ode_jax.PIDController` (default: integral controller).
        norm: error norm over the pytree of scaled errors (default: RMS over all elements).
        adjoint: how reverse-mode gradients are computed: an adjoint object
            (:class:`ode_jax.ContinuousAdjoint`, :class:`ode_jax.DiscreteAdjoint`) or the
            shorthand "continuous" / "discrete" for one with default options.
        probe: optional zero float array from :func:`ode_jax.make_probe`. Its gradient holds
            the backward pass's statistics (read it with :func:`ode_jax.probe_stats`).
        throw: raise on failure (also under jit); with False, check ``sol.result``.
        dense: record every accepted step so that ``sol.evaluate(t)`` gives y(t) anywhere in
            the solved interval from the method's own dense output (memory: ``max_steps``
            steps' dense data).
        save_steps: also return every accepted step: ``sol.step_ts`` and ``sol.step_ys``,
            padded to ``max_steps`` (times with inf, states with NaN); the count is
            ``sol.stats["num_accepted"]``.
        event: an :class:`ode_jax.Event`: stop at the first time its condition crosses zero
            (direction relative to the direction of integration). Then ``sol.event_time``,
            ``sol.event_state`` and ``sol.event_happened``; outputs at times after the event
            hold the event state. The event time is differentiable w.r.t. y0, args and ts[0]
            (implicit function theorem). Without an event, event_time is +-inf.
        jacobian: for the implicit solvers (kvaerno3/5, rodas5), ``jacobian(t, y, args)`` ->
            the (n, n) matrix df/dy on the state flattened as ``jax.flatten_util.ravel_pytree``
            does (default: ``jax.jacfwd`` of f, exact).

    Returns:
        :class:`ode_jax.Solution` with ``ys`` (leading axis ``len(ts)``) and ``stats``.
    """
    if moved:
        name = next(iter(moved))
        if name in _MOVED:
            raise TypeError(
                f"odeint() no longer takes {name}=; it is an option of the adjoint: pass "
                f"adjoint={_MOVED[name]}"
            )
        raise TypeError(f"odeint() got an unexpected keyword argument {name!r}")
    if not callable(f):
        raise TypeError(f"f must be callable f(t, y, args), got {type(f).__name__}")
    y0 = _validate_y0(y0)
    ts, ts_np = _validate_ts(ts)
    method = get_solver(solver)
    adjoint = get_adjoint(adjoint)
    if not method.adaptive and dt0 is None:
        raise ValueError(f"solver={method.name!r} takes fixed steps: pass dt0 (the step size)")
    adjoint.check(method, dt0)
    for name, value in (("rtol", rtol), ("atol", atol), ("dt0", dt0), ("dtmax", dtmax)):
        _check_positive(name, value)
    if isinstance(max_steps, bool) or not isinstance(max_steps, (int, np.integer)) or max_steps < 1:
        raise ValueError(f"max_steps must be a positive int, got {max_steps!r}")
    if probe is not None and jnp.shape(probe) not in ((4,), (len(PROBE_KEYS),)):
        raise ValueError(
            f"probe must have shape ({len(PROBE_KEYS)},) (see ode_jax.make_probe), got "
            f"{jnp.shape(probe)}"
        )
    _check_vector_field(f, ts[0], y0, args)

    tdtype = ts.dtype
    tols = Tolerances(
        rtol=jnp.asarray(rtol, tdtype),
        atol=jnp.asarray(atol, tdtype),
        dt0=None if dt0 is None else jnp.abs(jnp.asarray(dt0, tdtype)),
        dtmax=None if dtmax is None else jnp.asarray(dtmax, tdtype),
    )
    n = ts.shape[0]
    if n > 1 and ts_np is not None:
        direction = 1.0 if ts_np[-1] > ts_np[0] else -1.0
    elif n > 1:
        direction = jnp.where(ts[-1] > ts[0], 1.0, -1.0).astype(tdtype)
    else:
        direction = 1.0

    def oriented(s, y, a, d):
        # The field in the time s = d * t (d = +-1), so that every solve steps forwards.
        out = f(d * s, y, a)
        return jax.tree.map(lambda o, yl: (d * o).astype(yl.dtype), out, y)

    if jacobian is not None and not getattr(method, "uses_jacobian", False):
        raise ValueError(
            f"jacobian= is for the implicit solvers (kvaerno3, kvaerno5, rodas5); "
            f"solver={method.name!r} does not use a Jacobian"
        )
    if jacobian is not None and not callable(jacobian):
        raise TypeError(f"jacobian must be callable jacobian(t, y, args), got {jacobian!r}")
    oriented_jac = None
    if jacobian is not None:
        # d/dy of the oriented field d * f(d * s, y) is d * J(d * s, y).
        if isinstance(direction, float):
            oriented_jac = lambda s, y, a: direction * jacobian(direction * s, y, a)  # noqa: E731
        else:
            oriented_jac = lambda s, y, a_d: a_d[1] * jacobian(a_d[1] * s, y, a_d[0])  # noqa: E731
    if event is not None and not isinstance(event, Event):
        raise TypeError(f"event must be an ode_jax.Event, got {type(event).__name__}")
    if probe is None:
        probe = jnp.zeros((len(PROBE_KEYS),), tdtype)
    # Python floats in args are parameters: make them arrays so they are traced (and get
    # gradients) rather than baked into the compiled solve.
    args = jax.tree.map(lambda x: jnp.asarray(x) if isinstance(x, (float, complex)) else x, args)
    if isinstance(direction, float):
        # Concrete ts: the direction is a Python constant, not an argument. As an argument it
        # would be a parameter with an adjoint of its own (one more reduction per stage of
        # every backward step, for a gradient nobody needs).
        field, field_args = (lambda s, y, a: oriented(s, y, a, direction)), args
    else:
        direction = jnp.asarray(direction, tdtype)
        field, field_args = (lambda s, y, a_d: oriented(s, y, *a_d)), (args, direction)
    oriented_event = None
    if event is not None:
        _check_event(event, ts[0], y0, args)
        if isinstance(direction, float):
            cond = lambda s, y, a: event.cond_fn(direction * s, y, a)  # noqa: E731
        else:
            cond = lambda s, y, a_d: event.cond_fn(a_d[1] * s, y, a_d[0])  # noqa: E731
        oriented_event = Event(cond, event.direction)
    options = LoopOptions(
        solver=method,
        controller=controller or PIDController(),
        norm=norm or rms_norm,
        max_steps=int(max_steps),
        dense=bool(dense or save_steps),
        event=oriented_event,
        jacobian=oriented_jac,
    )
    # A y0 known at compile time (closed over under jit) is hidden from XLA's constant
    # folding, which otherwise evaluates every check and buffer written from it on the host,
    # one element at a time: 0.2 s of compile time for a (128, 6, 6, 64) state.
    y0 = jax.lax.optimization_barrier(y0)
    solved = adjoint.solve(field, y0, direction * ts, field_args, tols, probe, options)
    ys, stats, result, dt_next = solved.ys, solved.stats, solved.result, solved.dt_next
    missing = (options.dense and solved.dense is None) or (
        event is not None and solved.event is None
    )
    if missing:
        raise ValueError(
            f"adjoint={type(adjoint).__name__} does not support dense output, save_steps or "
            "events; use adjoint='continuous', 'discrete' or 'reversible'"
        )
    extras = {}
    if event is not None:
        extras, ys = _event_outputs(solved, oriented_event, field, field_args, direction, ts, ys)
    if save_steps:
        extras.update(_saved_steps(solved, direction, int(max_steps)))
    result = _blame_input(result, y0, args)
    for name, value in (("rtol", rtol), ("atol", atol), ("dt0", dt0), ("dtmax", dtmax)):
        ys = _runtime_positive(name, value, ys)
    ys = _check_ts_runtime(ts, ts_np, ys)
    if throw:
        ys = raise_if_failed(ys, result)
    return Solution(
        ts=ts,
        ys=ys,
        stats=stats,
        result=result,
        dt_next=dt_next,
        **extras,
        solved=solved if dense else None,
        direction=direction,
    )


def _check_event(event, t0, y0, args):
    try:
        out = eqx.filter_eval_shape(event.cond_fn, t0, y0, args)
    except Exception as e:
        e.add_note("(raised by ode_jax.odeint calling the event's cond_fn(t, y, args) at ts[0])")
        raise
    if not hasattr(out, "shape") or out.shape != () or not jnp.issubdtype(out.dtype, jnp.floating):
        raise ValueError(
            "the event's cond_fn(t, y, args) must return a real floating-point scalar, got "
            f"{getattr(out, 'shape', out)} {getattr(out, 'dtype', '')}"
        )


def _event_outputs(solved, event, field, field_args, direction, ts, ys):
    """The event's time (differentiable), state and flag, and ys with the outputs after the
    event replaced by the event state."""
    ev = solved.event
    happened = ev["happened"]
    span_end = solved.span[1]
    # A finite time to differentiate at even when nothing happened (then masked).
    s_star = jnp.where(happened, ev["time"], span_end)

    def evaluate(s):
        return solved.evaluator(solved, s, True)

    s_d = differentiable_event_time(
        event, s_star, evaluate, lambda s, y: field(s, y, field_args), field_args
    )
    y_star = evaluate(s_d)
    beyond = happened & (direction * ts > s_star)

    def fill(buf, v):
        return jnp.where(beyond.reshape((-1,) + (1,) * v.ndim), v[None].astype(buf.dtype), buf)

    ys = jax.tree.map(fill, ys, y_star)
    never = jnp.asarray(jnp.inf, ts.dtype) * direction
    end_state = jax.tree.map(lambda b: b[-1], ys)
    extras = dict(
        event_time=jnp.where(happened, direction * s_d, never),
        event_state=jax.tree.map(lambda a, b: jnp.where(happened, a, b), y_star, end_state),
        event_happened=happened,
    )
    return extras, ys


def _saved_steps(solved, direction, max_steps):
    """Every accepted step's end time and state, padded to max_steps."""
    bufs, count = solved.dense, solved.stats["num_accepted"]
    valid = jnp.arange(max_steps, dtype=jnp.int32) < count
    s_end = bufs["t"][:max_steps] + bufs["dt"][:max_steps]
    # Under the continuous adjoint the stored states carry no gradient; evaluating the dense
    # output at each step's end gives them the exact-solution gradient (a backward solve
    # per step, run only if they are differentiated).
    s_eval = jnp.where(valid, s_end, solved.span[0])
    if solved.data is not None:
        ys = jax.vmap(lambda s: solved.evaluator(solved, s, False))(s_eval)
    else:
        ys = jax.tree.map(lambda b: b[:max_steps], bufs["y1"])

    def pad(b):
        return jnp.where(valid.reshape((-1,) + (1,) * (b.ndim - 1)), b, jnp.nan)

    step_ts = jnp.where(valid, direction * s_end, jnp.inf)
    return dict(step_ts=step_ts, step_ys=jax.tree.map(pad, ys))


def _nonfinite(tree) -> jax.Array:
    """Whether any float array in ``tree`` holds a NaN or inf. Only asked of a solve that
    already failed (inside a cond), so one concatenation and one float reduction (the
    smallest program, see :func:`~ode_jax._solver.all_finite`) beat a reduction per leaf."""
    leaves = [x for x in jax.tree.leaves(tree) if eqx.is_inexact_array(x)]
    if not leaves:
        return jnp.asarray(False)
    # Inputs known at compile time would have this check folded by XLA on the host (see odeint).
    leaves = jax.lax.optimization_barrier([jax.lax.stop_gradient(x) for x in leaves])
    return ~all_finite(leaves, concatenate=True)


def _blame_input(result, y0, args):
    """A solve that failed on a non-finite state or step size is blamed on its input when y0
    or args holds a NaN or inf: the message then names the argument to fix. The inputs are
    only scanned when the solve failed (a branch of a cond, not run otherwise)."""
    failed = (
        (result == RESULTS.nonfinite)
        | (result == RESULTS.step_size_underflow)
        | (result == RESULTS.newton_failed)
        | (result == RESULTS.singular)
    )

    def blame(r):
        r = jnp.where(_nonfinite(y0), RESULTS.nonfinite_y0, r)
        return jnp.where((r != RESULTS.nonfinite_y0) & _nonfinite(args), RESULTS.nonfinite_args, r)

    return jax.lax.cond(jnp.any(failed), blame, lambda r: r, result).astype(jnp.int32)
