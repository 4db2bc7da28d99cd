"""Adjoints as objects: how a solve is differentiated in reverse mode.

An adjoint is an ``eqx.Module`` with one method the core calls, :meth:`AbstractAdjoint.solve`:
it runs the forward solve (the stepping loop of :mod:`ode_jax._loop`) under a ``custom_vjp``
whose backward rule is the adjoint's own. The concrete ones live in their own modules
(``_continuous.py``, ``_discrete.py``) and register a string shorthand here.

Backward statistics: every solve takes a float array ``probe`` (from :func:`make_probe`) whose
cotangent is set to the backward pass's statistics, in the order of :data:`PROBE_KEYS`.
Differentiating with respect to a zero probe therefore reads the statistics out of the gradient:
it works under jit/vmap with no host callbacks, and counts add up over every solve the probe is
passed to. A probe of shape (4,) (earlier versions) gets the first four.
"""

from __future__ import annotations

import abc
import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.custom_derivatives import SymbolicZero, custom_vjp_primal_tree_values

from ._control import PIDController
from ._event import Event
from ._loop import LoopOutput, Recorder, Tolerances, integrate
from ._solver import AbstractSolver

STAT_KEYS = ("nfe", "num_steps", "num_accepted", "num_rejected")
# The backward probe: the counts above, Jacobian evaluations and LU factorisations (implicit
# solvers), and the largest error of a state the backward pass reconstructed (max abs, over
# every output time it restarts from; 0 when nothing was reconstructed).
PROBE_KEYS = STAT_KEYS + ("num_jacobians", "num_lu", "reconstruction_error")


@dataclasses.dataclass(frozen=True)
class LoopOptions:
    """The static settings of a forward solve (the traced ones are :class:`Tolerances`)."""

    solver: AbstractSolver
    controller: PIDController
    norm: Callable
    max_steps: int
    dense: bool = False  # record every accepted step's dense output
    event: Event | None = None  # stop at the first zero crossing of its condition
    jacobian: Callable | None = None  # user's df/dy (t, y, args) -> (n, n), implicit solvers


def make_probe(dtype=None) -> jax.Array:
    """A zero probe; the gradient of a loss w.r.t. it holds the backward-pass statistics."""
    return jnp.zeros((len(PROBE_KEYS),), dtype or jnp.result_type(float))


def probe_stats(probe_grad) -> dict:
    """Turn a probe's gradient into a dict keyed by :data:`PROBE_KEYS`: integer counts, and
    the float "reconstruction_error"."""
    out = {}
    for i, k in enumerate(PROBE_KEYS[: probe_grad.shape[-1]]):
        v = probe_grad[..., i]
        out[k] = v if k == "reconstruction_error" else jnp.round(v).astype(jnp.int32)
    return out


def stats_vector(stats, like):
    """The entries of ``stats`` (a dict; missing keys count 0) as a vector shaped like the
    probe ``like``."""
    keys = PROBE_KEYS[: like.shape[0]]
    return jnp.stack([jnp.asarray(stats.get(k, 0)).astype(like.dtype) for k in keys])


def tree_dot(a, b):
    return sum(jnp.real(jnp.sum(x * y)) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def tree_take(tree, i):
    return jax.tree.map(lambda x: x[i], tree)


def tree_zeros_like(tree):
    return jax.tree.map(jnp.zeros_like, tree)


def tree_max_abs_diff(a, b):
    """max |a - b| over every element of two pytrees of the same structure."""
    diffs = [jnp.max(jnp.abs(x - y)) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))]
    return jnp.max(jnp.stack(diffs))


def tree_add(a, b):
    return jax.tree.map(lambda x, y: x + y, a, b)


class Field:
    """The vector field (and an event's condition) with their arrays split out.

    ``vf(t, y, d)`` calls f with args rebuilt from ``d``, the arrays to differentiate (those
    of args and those f closes over: as jax.experimental.ode does); ``cond(t, y, d)`` likewise
    for an event's condition. The static part holds nothing to differentiate.
    """

    def __init__(self, static):
        self.static = static  # a plain attribute: it may hold non-float arrays (consts)

    def _parts(self, d):
        # Under AD, JAX may hand custom_vjp rules weakly-typed Python scalars; make them arrays
        # again so the closure-converted function sees the avals it was traced with.
        return eqx.combine(jax.tree.map(jnp.asarray, d), self.static)

    def __call__(self, t, y, d):
        fc, _, a, _ = self._parts(d)
        return fc(t, y, a)

    def cond(self, t, y, d):
        _, cc, a, _ = self._parts(d)
        return cc(t, y, a)

    @property
    def has_jacobian(self) -> bool:
        return self.static[3] is not None

    def jacobian(self, t, y, d):
        _, _, a, jc = self._parts(d)
        return jc(t, y, a)


def split_field(f, y0, ts, args, cond_fn=None, jacobian=None):
    """Closure-convert f (and cond_fn, jacobian) and split them and args into arrays to
    differentiate and the rest. Returns ``(vf, diff)`` with ``vf`` a :class:`Field`."""

    def convert(fn):
        return None if fn is None else eqx.filter_closure_convert(fn, ts[0], y0, args)

    parts = (convert(f), convert(cond_fn), args, convert(jacobian))
    diff, static = eqx.partition(parts, eqx.is_inexact_array)
    return Field(static), diff


def run_loop(
    vf, y0, ts, d, tols: Tolerances, options: LoopOptions, recorder: Recorder = None
) -> LoopOutput:
    """The forward solve: ``integrate`` with the settings of ``options``."""
    return integrate(
        options.solver,
        vf,
        y0,
        ts,
        d,
        tols,
        max_steps=options.max_steps,
        controller=options.controller,
        norm=options.norm,
        recorder=recorder,
        dense=options.dense,
        event=options.event,
        cond_fn=None if options.event is None else vf.cond,
    )


def event_cond(options: LoopOptions):
    return None if options.event is None else options.event.cond_fn


def event_step(out: LoopOutput):
    return None if out.event is None else out.event["step"]


def outputs(out: LoopOutput):
    """The outputs of a solve's custom_vjp core."""
    return out.ys, out.stats, out.result, out.dt_next, out.dense, out.event


class Solved(eqx.Module):
    """What :meth:`AbstractAdjoint.solve` returns: the outputs of the core, and how to
    evaluate the dense output differentiably under this adjoint.

    ``evaluator(solved, s, at_event) -> y``: the solution at (forward-running) time s, from the
    recorded steps (``at_event``: from the step the event stopped in).
    """

    ys: Any
    stats: dict
    result: jax.Array
    dt_next: jax.Array
    dense: Any
    event: Any
    span: jax.Array  # [s0, the last time reached]
    data: Any  # arrays the evaluator needs besides the recorded steps
    evaluator: Callable | None = eqx.field(static=True, default=None)

    @classmethod
    def plain(cls, ys, stats, result, dt_next, ts):
        """The output of a solve without dense output or events."""
        span = jnp.stack([ts[0], ts[-1]])
        return cls(ys, stats, result, dt_next, None, None, span, None, None)

    @classmethod
    def from_core(cls, core_out, vf, d, y0, ts, options, data=None, evaluator=None):
        ys, stats, result, dt_next, dense, event = core_out
        end = ts[-1] if event is None else jnp.where(event["happened"], event["time"], ts[-1])
        if evaluator is None and (dense is not None or event is not None):
            evaluator = functools.partial(_evaluate_recorded, options.solver)
        span = jnp.stack([ts[0], jnp.asarray(end, ts.dtype)])
        return cls(ys, stats, result, dt_next, dense, event, span, data, evaluator)


def _evaluate_recorded(solver, solved: Solved, s, at_event: bool):
    from ._dense import interpolate_event_step, interpolate_recorded

    if at_event:
        return interpolate_event_step(solver, solved.event, s)
    count = solved.stats["num_accepted"]
    return interpolate_recorded(solver, solved.dense, count, s, solved.span[0], solved.span[1])


def instantiate_zeros(tree):
    """A custom_vjp cotangent pytree (rules defined with ``symbolic_zeros=True``) with every
    symbolic zero made an array of zeros (float0 for integer outputs), as a custom_jvp
    wrapper or arithmetic needs."""

    def leaf(ct):
        if not isinstance(ct, SymbolicZero):
            return ct
        if ct.aval.dtype == jax.dtypes.float0:
            return np.zeros(ct.aval.shape, jax.dtypes.float0)
        return jnp.zeros(ct.aval.shape, ct.aval.dtype)

    return jax.tree.map(leaf, tree, is_leaf=lambda x: isinstance(x, SymbolicZero))


def defvjp_marking_times(core, fwd, bwd):
    """``core.defvjp`` with symbolic zeros for an adjoint's core, whose second argument is
    ts: ``fwd(*values) -> (outputs, residuals)``; ``bwd(residuals, cts)`` gets the residuals
    with one more element, ``()`` if ts carries a tangent and ``None`` if not (kept in the
    structure, so every call keeps its own answer), and cts with symbolic zeros made arrays,
    before any wrapper (custom_jvp) sees them. Used by every adjoint: the continuous one
    skips the times' gradient, the walk-back ones their interpolation (:func:`end_only`)."""

    def core_fwd(*primals):
        times = () if primals[1].perturbed else None
        outs, res = fwd(*custom_vjp_primal_tree_values(primals))
        return outs, (*res, times)

    def core_bwd(res, cts):
        return bwd(res, instantiate_zeros(cts))

    core.defvjp(core_fwd, core_bwd, symbolic_zeros=True)


def end_only(ts, options: LoopOptions, times) -> bool:
    """Whether a walk back over the accepted steps can skip the outputs' interpolation: ts =
    [t0, t1] is not differentiated (``times`` is None, see :func:`defvjp_marking_times`) and
    there is no dense output or event. Output 1 is then the last accepted step's end state (the
    loop lands on t1), so its cotangent starts the walk (:func:`end_cotangent`)."""
    return ts.shape[0] == 2 and times is None and not options.dense and options.event is None


def end_cotangent(g_ys, out_step):
    """The cotangent of the final state when :func:`end_only`: that of output 1, or zero if
    the solve never reached t1 (``out_step[1] < 0``)."""
    return jax.tree.map(lambda g: jnp.where(out_step[1] >= 0, g[1], jnp.zeros_like(g[1])), g_ys)


def not_differentiable_twice(fn, message: str):
    """``fn`` with a JVP rule that raises ``message``: forward-over-reverse and
    reverse-over-reverse differentiation of a backward rule then fail with a clear error
    instead of JAX's complaint about while loops."""

    @jax.custom_jvp
    def wrapped(*xs):
        return fn(*xs)

    @wrapped.defjvp
    def _jvp(primals, tangents):
        raise NotImplementedError(message)

    return wrapped


class AbstractAdjoint(eqx.Module):
    """How reverse-mode gradients of a solve are computed.

    A subclass implements :meth:`solve`. Its options are its fields; :meth:`check` rejects a
    combination with a solver that it cannot serve, at trace time.
    """

    @abc.abstractmethod
    def solve(self, f, y0, ts, args, tols: Tolerances, probe, options: LoopOptions) -> Solved:
        """Solve dy/dt = f(t, y, args) forwards over the increasing ``ts`` under this adjoint's
        ``custom_vjp`` and return a :class:`Solved`. The cotangent of ``probe`` must be the
        backward pass's statistics (see :func:`make_probe`). With ``options.dense`` or
        ``options.event``, the recorded steps must be differentiable through
        ``Solved.evaluator``."""

    def check(self, solver: AbstractSolver, dt0) -> None:
        """Raise a ValueError if this adjoint cannot differentiate solves with ``solver``."""


ADJOINTS: dict[str, type] = {}


def register_adjoint(name: str, cls: type) -> None:
    """Make ``adjoint=name`` a shorthand for ``cls()``."""
    ADJOINTS[name] = cls


def get_adjoint(adjoint) -> AbstractAdjoint:
    """Resolve an adjoint object or a shorthand string."""
    if isinstance(adjoint, AbstractAdjoint):
        return adjoint
    if isinstance(adjoint, str) and adjoint in ADJOINTS:
        return ADJOINTS[adjoint]()
    raise ValueError(
        f"adjoint={adjoint!r} is not an adjoint; pass one of {sorted(ADJOINTS)} or an object "
        "such as ode_jax.ContinuousAdjoint(...) / ode_jax.DiscreteAdjoint(...)"
    )


def positive_or_none(owner: str, name: str, value, *, integer=False, minimum=None):
    """Validate an optional option at construction (traced values pass through)."""
    if value is None or isinstance(value, jax.core.Tracer):
        return value
    if integer:
        ok = isinstance(value, int) and not isinstance(value, bool)
        ok = ok and value >= (minimum or 1)
        if not ok:
            raise ValueError(f"{owner}: {name} must be an int >= {minimum or 1}, got {value!r}")
        return value
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{owner}: {name} must be a positive number, got {value!r}") from None
    if not (v > 0 and v < float("inf")):
        raise ValueError(f"{owner}: {name} must be finite and positive, got {value!r}")
    return value
