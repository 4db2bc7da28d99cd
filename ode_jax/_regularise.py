"""Regularisers that make a neural ODE cheap to solve, computed along the same solve.

Each penalty is an integral over the solve, integrated by augmenting the state ``y`` with one
scalar accumulator per penalty: the solve of ``(y, rates)`` returns ``y`` and the integrals
together, with no second solve. Along the trajectory ``y(t)`` of ``dy/dt = f(t, y)``:

- ``"kinetic"`` (RNODE, Finlay et al. 2020): ``∫ ||f(t, y)||² dt``.
- ``"jacobian"`` (RNODE): ``∫ ||∂f/∂y||_F² dt``, by Hutchinson's estimator
  ``||∂f/∂y||_F² = E[||(∂f/∂y) ε||²]`` for ``E[εεᵀ] = I``: one JVP per evaluation with the
  probe ``ε`` drawn once per solve and held fixed (so the augmented system stays an ODE and the
  estimate is unbiased); ``trace="exact"`` sums over a basis instead (small states only).
- ``"taynode"`` (Kelly et al. 2020): ``∫ ||d^K y/dt^K||² dt``, the K-th total time derivative
  of the solution, by Taylor-mode AD (``jax.experimental.jet``): ``y' = f`` and
  ``y^(k+1) = d^k/dt^k f(t, y(t))``, one jet of order k per k < K. K = 1 is "kinetic".
- ``"error"`` (Pal et al. 2021): ``Σ_j ||ê_j||``, the RMS of the solver's own local error
  estimate ``ê_j`` over the accepted steps: not an integral of the field but a by-product of
  each step, accumulated by the solver wrapper :func:`accumulate_error`.

Every penalty sums over all elements of the state: a batch solved as one ODE (the ODE-Net,
the CNF) gets the sum over the batch; divide by the batch size for a per-sample mean.

STEER (Ghosh et al. 2020) is not a penalty but a random end time ``T ~ U(T - b, T + b)`` per
training solve (:func:`steer_end_time`).

Adjoints: kinetic, jacobian and taynode augment the ODE itself, so every adjoint
differentiates them (continuous, discrete, reversible). The error estimate is a function of
each discrete step and only the discrete adjoint differentiates it (the continuous adjoint
would treat the accumulator as a constant); :func:`regularised_odeint` raises a ValueError for
the other adjoints.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Literal

import equinox as eqx
import jax
import jax.flatten_util
import jax.numpy as jnp
from jax.experimental.jet import jet

from ._control import rms_norm
from ._odeint import odeint
from ._solver import AbstractSolver
from ._solvers import get_solver

PENALTIES = ("kinetic", "jacobian", "taynode", "error")
_FIELD_PENALTIES = ("kinetic", "jacobian", "taynode")


def _sum_squares(tree) -> jax.Array:
    return sum(jnp.sum(jnp.real(x * jnp.conj(x))) for x in jax.tree.leaves(tree))


def taylor_derivatives(fn: Callable, t, y, order: int) -> list:
    """``[y', y'', ..., y^(order)]`` at ``(t, y)`` of the solution of ``dy/dt = fn(t, y)``.

    Taylor-mode AD: with ``x = (t, y)`` and ``x' = (1, fn(t, y))``, the k-th derivative of
    ``fn(t(s), y(s))`` given the first k derivatives of ``x`` is one ``jet`` of order k; it is
    ``y^(k+1)``. ``y`` is a float array (ravel a pytree first). ``y''`` is one JVP (a jet of
    order 1); orders >= 3 need ``fn`` free of ``custom_jvp`` functions (a jet limitation).
    """
    if order < 1:
        raise ValueError(f"order must be >= 1, got {order}")
    derivs = [fn(t, y)]
    one, zero = jnp.ones_like(t), jnp.zeros_like(t)
    if order >= 2:
        # A jet of order 1 is a JVP; as one it also works through custom_jvp functions
        # (jax.nn.relu), which jet does not trace cleanly.
        derivs.append(jax.jvp(fn, (t, y), (one, derivs[0]))[1])
    for k in range(2, order):
        t_series = [one] + [zero] * (k - 1)
        _, terms = jet(fn, (t, y), (t_series, derivs))
        derivs.append(terms[k - 1])
    return derivs


def penalty_rates(fn: Callable, t, y, penalties, *, eps=None, order: int = 2, trace="hutchinson"):
    """``(fn(t, y), {penalty: integrand at (t, y)})`` for the field penalties.

    Args:
        fn: the vector field ``fn(t, y)``, ``y`` a pytree of float arrays.
        penalties: names from ``("kinetic", "jacobian", "taynode")`` (others are ignored).
        eps: the Hutchinson probe, a pytree like ``y`` (``"jacobian"`` with ``trace="hutchinson"``).
        order: K of ``"taynode"``.
        trace: ``"hutchinson"`` (one JVP, unbiased) or ``"exact"`` (one JVP per element of y).

    The field is evaluated once: the JVP of ``"jacobian"`` returns it as its primal.
    """
    rates = {}
    if "jacobian" in penalties:
        if trace == "hutchinson":
            if eps is None:
                raise ValueError("the 'jacobian' penalty with trace='hutchinson' needs eps")
            fy, jac_eps = jax.jvp(lambda y_: fn(t, y_), (y,), (eps,))
            rates["jacobian"] = _sum_squares(jac_eps)
        elif trace == "exact":
            fy, jvp = jax.linearize(lambda y_: fn(t, y_), y)
            flat, unravel = jax.flatten_util.ravel_pytree(y)
            basis = jnp.eye(flat.shape[0], dtype=flat.dtype)
            rates["jacobian"] = jnp.sum(
                jax.vmap(lambda e: _sum_squares(jvp(unravel(e))))(basis)
            ).astype(flat.dtype)
        else:
            raise ValueError(f"trace={trace!r} is not 'hutchinson' or 'exact'")
    else:
        fy = fn(t, y)
    if "kinetic" in penalties:
        rates["kinetic"] = _sum_squares(fy)
    if "taynode" in penalties:
        flat, unravel = jax.flatten_util.ravel_pytree(y)

        def flat_fn(t_, y_):
            return jax.flatten_util.ravel_pytree(fn(t_, unravel(y_)))[0]

        t_arr = jnp.asarray(t, flat.dtype)
        rates["taynode"] = _sum_squares(taylor_derivatives(flat_fn, t_arr, flat, order)[-1])
    return fy, rates


@dataclasses.dataclass(frozen=True)
class Regulariser:
    """Which penalties a regularised solve integrates, and how; hashable (a static field).

    Args:
        penalties: a subset of :data:`PENALTIES` ("kinetic", "jacobian", "taynode", "error").
        order: K of "taynode" (the K-th total time derivative; >= 1).
        trace: "hutchinson" (one Rademacher/Gaussian probe per solve) or "exact" for "jacobian".
        noise: the Hutchinson probe, "rademacher" or "gaussian" (``E[εεᵀ] = I``).
        steer: STEER's half width ``b``: each training solve ends at ``T ~ U(T - b, T + b)``
            (0: the fixed end time).
    """

    penalties: tuple[str, ...] = ()
    order: int = 2
    trace: Literal["hutchinson", "exact"] = "hutchinson"
    noise: Literal["rademacher", "gaussian"] = "rademacher"
    steer: float = 0.0

    def __post_init__(self):
        if isinstance(self.penalties, str):
            object.__setattr__(self, "penalties", (self.penalties,))
        bad = [p for p in self.penalties if p not in PENALTIES]
        if bad:
            raise ValueError(f"Regulariser: unknown penalties {bad}; known: {PENALTIES}")
        if len(set(self.penalties)) != len(self.penalties):
            raise ValueError(f"Regulariser: repeated penalties {self.penalties}")
        if not (isinstance(self.order, int) and self.order >= 1):
            raise ValueError(f"Regulariser: order must be an int >= 1, got {self.order!r}")
        if self.trace not in ("hutchinson", "exact"):
            raise ValueError(f"Regulariser: trace={self.trace!r} is not 'hutchinson' or 'exact'")
        if self.noise not in ("rademacher", "gaussian"):
            raise ValueError(f"Regulariser: noise={self.noise!r} is not 'rademacher'/'gaussian'")
        if not self.steer >= 0:
            raise ValueError(f"Regulariser: steer must be >= 0, got {self.steer!r}")

    @property
    def needs_key(self) -> bool:
        """Whether a solve draws random numbers (a Hutchinson probe or a STEER end time)."""
        hutch = "jacobian" in self.penalties and self.trace == "hutchinson"
        return hutch or self.steer > 0


def init_state(y0, penalties, dtype=None) -> tuple:
    """The augmented initial state ``(y0, {penalty: 0})``."""
    dtype = dtype or jnp.result_type(*jax.tree.leaves(y0))
    return y0, {p: jnp.zeros((), dtype) for p in penalties}


def regularised_field(f: Callable, reg: Regulariser) -> Callable:
    """The augmented field ``g(t, (y, rates), (args, eps)) -> (f(t, y, args), d rates/dt)``.

    ``eps`` is the Hutchinson probe (None unless needed). The "error" accumulator's rate is
    zero: :func:`accumulate_error` adds each step's error estimate to it.
    """

    def g(t, state, args_eps):
        y, rates = state
        args, eps = args_eps
        fy, dr = penalty_rates(
            lambda t_, y_: f(t_, y_, args),
            t,
            y,
            reg.penalties,
            eps=eps,
            order=reg.order,
            trace=reg.trace,
        )
        out = {
            p: dr[p].astype(rates[p].dtype) if p in dr else jnp.zeros_like(rates[p]) for p in rates
        }
        return fy, out

    return g


def state_norm(norm: Callable = rms_norm) -> Callable:
    """An error norm over ``(y, rates)`` that sees only ``y``: the penalties' accumulators do
    not change the step sizes (the regularised solve steps as the plain one would)."""

    def y_norm(err):
        return norm(err[0])

    return y_norm


def _error_norm(err) -> jax.Array:
    return rms_norm(err)


class ErrorAccumulator(AbstractSolver):
    """An adaptive solver whose state ``(y, rates)`` accumulates, in ``rates["error"]``, the
    RMS of its base method's local error estimate of ``y`` over the accepted steps (Pal et al.
    2021): ``Σ_j ||ê_j||``. Build it with :func:`accumulate_error`.

    The accumulator is excluded from the error estimate (it never changes a step size) and is
    differentiable through the steps: use ``adjoint="discrete"``. Using it with the continuous
    adjoint raises (the continuous adjoint would see a constant).
    """

    base: AbstractSolver = eqx.field(static=True)

    @property
    def name(self) -> str:
        return f"accumulate_error({self.base.name})"

    @property
    def order(self) -> int:
        return self.base.order

    @property
    def adaptive(self) -> bool:
        return True

    @property
    def needs_tolerances(self) -> bool:
        return self.base.needs_tolerances

    @property
    def uses_jacobian(self) -> bool:
        return getattr(self.base, "uses_jacobian", False)

    @property
    def differentiable_steps(self) -> bool:
        return self.base.differentiable_steps

    def init(self, f, t0, y0, args, f0=None, **kwargs):
        return self.base.init(f, t0, y0, args, f0, **kwargs)

    def step(self, f, t, y, dt, args, state):
        y1, err, info, state1, nfe = self.base.step(f, t, y, dt, args, state)
        rates0 = y[1]
        e = _error_norm(err[0]).astype(rates0["error"].dtype)
        rates1 = {**y1[1], "error": rates0["error"] + e}
        err = (err[0], jax.tree.map(jnp.zeros_like, err[1]))
        return (y1[0], rates1), err, (info, rates0, rates1), state1, nfe

    def interpolate(self, dense_info, theta):
        info, r0, r1 = dense_info
        y, rates = self.base.interpolate(info, theta)
        # The error accumulator jumps by step; linear within one keeps theta = 1 exact.
        err = r0["error"] + jnp.asarray(theta, r0["error"].dtype) * (r1["error"] - r0["error"])
        return y, {**rates, "error": err}

    def select_state(self, accept, old_state, new_state, dense_info):
        return self.base.select_state(accept, old_state, new_state, dense_info[0])

    def counters(self, state) -> dict:
        return self.base.counters(state)

    def failure(self, state):
        return self.base.failure(state)

    def checkpoint_state(self, state):
        return self.base.checkpoint_state(state)

    def _restart(self, f, t, y, args, saved):
        return self.base._restart(f, t, y, args, saved)

    def looped(self):
        # Only the continuous adjoint asks for this (its backward solve).
        raise ValueError(
            "the 'error' penalty (ode_jax.accumulate_error) is differentiable only through the "
            "steps: use adjoint='discrete' (the continuous adjoint would treat the accumulated "
            "error estimate as a constant)"
        )


def accumulate_error(solver="tsit5") -> ErrorAccumulator:
    """Wrap an adaptive ``solver`` (a name or object) so that it accumulates its local error
    estimates in the state ``(y, rates)``: ``rates["error"] += ||ê_j||_RMS`` per accepted step.
    """
    base = get_solver(solver)
    if not base.adaptive:
        raise ValueError(
            f"accumulate_error: solver={base.name!r} takes fixed steps and has no error estimate"
        )
    if isinstance(base, ErrorAccumulator):
        return base
    return ErrorAccumulator(base)


def hutchinson_probe(key, like, noise: str = "rademacher"):
    """A probe shaped like the pytree ``like`` with ``E[εεᵀ] = I``."""
    leaves, treedef = jax.tree.flatten(like)
    keys = jax.random.split(key, len(leaves))
    if noise == "rademacher":
        draw = [jax.random.rademacher(k, x.shape, x.dtype) for k, x in zip(keys, leaves)]
    elif noise == "gaussian":
        draw = [jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves)]
    else:
        raise ValueError(f"noise={noise!r} is not 'rademacher' or 'gaussian'")
    return jax.tree.unflatten(treedef, draw)


def steer_end_time(key, t0, t1, b, dtype=None) -> jax.Array:
    """STEER's end time ``T ~ U(t1 - b, t1 + b)`` (Ghosh et al. 2020); needs ``b < |t1 - t0|``."""
    if not 0 <= b < abs(t1 - t0):
        raise ValueError(f"STEER needs 0 <= b < |t1 - t0| = {abs(t1 - t0)}, got b={b}")
    dtype = dtype or jnp.result_type(float)
    return jax.random.uniform(key, (), dtype, t1 - b, t1 + b)


def regularised_odeint(
    f: Callable, y0, ts, args=None, *, regulariser: Regulariser, key=None, norm=None, **kwargs
):
    """:func:`ode_jax.odeint` of ``f`` plus the penalties of ``regulariser`` along the solve.

    Returns ``(sol, penalties)``: ``sol`` a :class:`ode_jax.Solution` whose ``ys`` is ``y`` at
    ``ts`` (as a plain solve's), and ``penalties`` a dict ``{name: value at ts[-1]}`` (the
    integral, or the accumulated error estimate, from ``ts[0]``). ``key`` draws the Hutchinson
    probe (needed for "jacobian" with the Hutchinson trace). STEER is not applied here (ts are
    the caller's: see :func:`steer_end_time`). ``kwargs`` go to ``odeint`` (solver, rtol,
    adjoint, probe, ...). The step sizes are those of the plain solve: the error norm sees
    only ``y``.
    """
    reg = regulariser
    kwargs = solve_kwargs(reg, dict(kwargs, norm=norm))
    eps = None
    if "jacobian" in reg.penalties and reg.trace == "hutchinson":
        if key is None:
            raise ValueError("the 'jacobian' penalty (Hutchinson) needs a PRNG key (key=...)")
        eps = hutchinson_probe(key, y0, reg.noise)
    sol = odeint(
        regularised_field(f, reg), init_state(y0, reg.penalties), ts, (args, eps), **kwargs
    )
    return split_solution(sol, ts)


def solve_kwargs(reg: Regulariser, kwargs: dict) -> dict:
    """``odeint`` keyword arguments for a solve of the augmented state ``(y, rates)``: the
    solver wrapped by :func:`accumulate_error` when "error" is penalised (after checking
    that the adjoint can differentiate it) and the error norm restricted to ``y``."""
    if not isinstance(reg, Regulariser):
        raise TypeError(f"regulariser must be an ode_jax.Regulariser, got {reg!r}")
    kwargs = dict(kwargs)
    solver = kwargs.get("solver", "tsit5")
    if "error" in reg.penalties:
        adjoint = kwargs.get("adjoint", "continuous")
        if adjoint != "discrete" and type(adjoint).__name__ != "DiscreteAdjoint":
            raise ValueError(
                f"the 'error' penalty is differentiable only through the steps: use "
                f"adjoint='discrete', got adjoint={adjoint!r}"
            )
        solver = accumulate_error(solver)
    kwargs["solver"] = solver
    kwargs["norm"] = state_norm(kwargs.get("norm") or rms_norm)
    return kwargs


def split_solution(sol, ts):
    """``(sol with ys = y only, {penalty: value at ts[-1]})`` of a solve of ``(y, rates)``
    over the times ``ts``.

    The field penalties are integrals over |dt|: a solve backwards in time (``ts`` falling, as
    a CNF's sampling direction) accumulates their rates with dt < 0, so their values are
    turned back to >= 0 here. The error estimate's accumulator only ever grows.
    """
    ys, rates = sol.ys
    direction = jnp.sign(jnp.asarray(ts[-1]) - jnp.asarray(ts[0]))
    penalties = {
        p: r[-1] * direction.astype(r.dtype) if p in _FIELD_PENALTIES else r[-1]
        for p, r in rates.items()
    }
    return eqx.tree_at(lambda s: s.ys, sol, ys), penalties
