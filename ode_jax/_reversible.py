"""Algebraically reversible solvers and the reversible adjoint (McCallum & Foster 2024,
"Efficient, Accurate and Stable Gradients for Neural ODEs", arXiv 2410.11648).

Any explicit Runge-Kutta method, written as an increment y + Psi_h(t, y), becomes reversible by
carrying a second state z and a coupling lambda in (0, 1]:

    y_{n+1} = lambda y_n + (1 - lambda) z_n + Psi_h(t_n, z_n)
    z_{n+1} = z_n - Psi_{-h}(t_{n+1}, y_{n+1})

and each step can be undone in closed form, from the step's end state alone:

    z_n = z_{n+1} + Psi_{-h}(t_{n+1}, y_{n+1})
    y_n = (y_{n+1} - (1 - lambda) z_n - Psi_h(t_n, z_n)) / lambda

So the reversible adjoint needs no stored states: its backward pass rebuilds each step's start
from its end and takes the step's VJP there. The gradient is the exact gradient of the computed
solution (the discrete adjoint's), up to the round-off of the reconstruction, with memory that
does not grow with the number of steps. lambda < 1 damps the unstable mode of the coupled
pair (lambda = 1 is reversible Heun's and the asynchronous leapfrog's coupling); the inverse
divides by lambda, so round-off grows by at most 1 / lambda per step backwards.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp

from ._adjoint import (
    PROBE_KEYS,
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
    register_adjoint,
    run_loop,
    split_field,
    stats_vector,
    tree_add,
    tree_max_abs_diff,
    tree_take,
    tree_zeros_like,
)
from ._dense import injector
from ._discrete import last_written_output, pull_back_init, pull_back_step
from ._loop import Recorder
from ._runge_kutta import RungeKutta, rk_step
from ._solver import AbstractSolver


def _lin(a, x, b, y):
    """a * x + b * y leaf by leaf (a, b Python floats)."""
    return jax.tree.map(lambda u, v: a * u + b * v, x, y)


def _sub(x, y):
    return jax.tree.map(lambda u, v: u - v, x, y)


class ReversibleSolver(AbstractSolver):
    """An explicit Runge-Kutta method made algebraically reversible; build it with
    :func:`ode_jax.reversible`. Its state is the second solution z (z_0 = y_0)."""

    base: RungeKutta = eqx.field(static=True)
    coupling: float = eqx.field(static=True, default=0.999)

    @property
    def name(self) -> str:
        return f"reversible({self.base.name})"

    @property
    def order(self) -> int:
        return self.base.order

    @property
    def adaptive(self) -> bool:
        return self.base.adaptive

    def _backward_evals(self) -> int:
        # The step from y_{n+1} with -h needs only the increment: an FSAL method's last stage
        # (which feeds only the dense output and the error estimate) is dead code there and
        # compiled away, unless the stages run in a loop.
        if self.base.loops_stages:
            return self.base.stages
        return self.base.evals_per_step if self.base.fsal else self.base.stages

    def init(self, f, t0, y0, args, f0=None):
        return y0, jnp.asarray(0, jnp.int32)

    def step(self, f, t, y, dt, args, z):
        lam = self.coupling
        z_base, y_err, ks = rk_step(self.base, f, t, z, dt, args, None)
        y1 = tree_add(_lin(lam, y, 1.0 - lam, z), _sub(z_base, z))
        y_back, _, _ = rk_step(self.base, f, t + dt, y1, -dt, args, None)
        z1 = tree_add(z, _sub(y1, y_back))  # z - Psi_{-h}(t + h, y1)
        nfe = jnp.asarray(self.base.stages + self._backward_evals(), jnp.int32)
        return y1, y_err, (y, z, ks, dt), z1, nfe

    def interpolate(self, dense_info, theta):
        # y_n + theta (1 - lambda)(z_n - y_n) + [the base method's dense increment from z_n]:
        # y_n at theta = 0, y_{n+1} at theta = 1, and the base method's order in between.
        y, z, ks, dt = dense_info
        lam = self.coupling
        z_theta = self.base.interpolate((z, ks, dt), theta)
        return jax.tree.map(
            lambda yl, zl, zt: yl + (theta * (1.0 - lam)) * (zl - yl) + (zt - zl), y, z, z_theta
        )

    def inverse(self, f, t, dt, args, y1, z1):
        """The start (y_n, z_n) of the step over [t, t + dt] that ended at (y1, z1); and the
        evaluations of f it took."""
        lam = self.coupling
        y_back, _, _ = rk_step(self.base, f, t + dt, y1, -dt, args, None)
        z = tree_add(z1, _sub(y_back, y1))  # z_{n+1} + Psi_{-h}(t + h, y1)
        z_base, _, _ = rk_step(self.base, f, t, z, dt, args, None)
        y = jax.tree.map(lambda a, zl, zb: (a - (1.0 - lam) * zl - (zb - zl)) / lam, y1, z, z_base)
        return y, z, jnp.asarray(2 * self._backward_evals(), jnp.int32)

    def looped(self) -> ReversibleSolver:
        return ReversibleSolver(self.base.looped(), self.coupling)

    def checkpoint_state(self, state):
        return state

    def _restart(self, f, t, y, args, saved):
        return saved, jnp.asarray(0, jnp.int32)


def reversible(method="tsit5", coupling: float = 0.999) -> ReversibleSolver:
    """An algebraically reversible version of an explicit Runge-Kutta ``method`` (a name or an
    :class:`ode_jax.RungeKutta`), usable with every adjoint and adaptive when the method is.

    ``coupling`` (lambda, in (0, 1]): how strongly the two states are pulled together each
    step. Values just below 1 (the default 0.999) keep the method stable without noticeably
    amplifying round-off in the backward reconstruction.
    """
    from ._solvers import get_solver

    base = get_solver(method)
    if not isinstance(base, RungeKutta):
        raise ValueError(
            f"reversible(method={base.name!r}): the method must be an explicit Runge-Kutta "
            "method (a name such as 'tsit5' or an ode_jax.RungeKutta)"
        )
    try:
        lam = float(coupling)
    except (TypeError, ValueError):
        msg = f"reversible: coupling must be a number in (0, 1], got {coupling!r}"
        raise ValueError(msg) from None
    if not 0.0 < lam <= 1.0:
        raise ValueError(f"reversible: coupling must be in (0, 1], got {coupling!r}")
    return ReversibleSolver(base, lam)


class ReversibleAdjoint(AbstractAdjoint):
    """Exact gradients of a reversible solve at O(1) memory in the number of steps.

    The forward pass stores the accepted (t, dt) sequence (a buffer of ``max_steps`` times),
    the outputs, and the final state; the backward pass inverts each step and applies its VJP.
    The backward probe's "reconstruction_error" is the largest absolute error of the rebuilt
    initial state y0: the round-off the reconstruction accumulated.
    """

    def check(self, solver, dt0):
        if not isinstance(solver, ReversibleSolver):
            raise ValueError(
                f"adjoint='reversible' needs a reversible solver, got solver={solver.name!r}; "
                f"use solver=ode_jax.reversible({solver.name!r})"
            )

    def solve(self, f, y0, ts, args, tols, probe, options: LoopOptions):
        vf, diff = split_field(f, y0, ts, args, event_cond(options), options.jacobian)
        solver = options.solver

        @jax.custom_vjp
        def core(y0, ts, d, tols, probe):
            return outputs(run_loop(vf, y0, ts, d, tols, options))

        def core_fwd(y0, ts, d, tols, probe):
            recorder = _StepTimes(options.max_steps)
            out = run_loop(vf, y0, ts, d, tols, options, recorder)
            res = (y0, ts, d, tols, probe, out.stats, out.aux, event_step(out))
            return outputs(out), res

        def backward(res, cts):
            *res, times = res
            return _reversible_backward(vf, solver, res, cts, end_only(ts, options, times))

        backward = not_differentiable_twice(
            backward,
            "ode_jax: the reversible adjoint cannot be differentiated twice; use "
            "adjoint='continuous' for grad-of-grad",
        )
        defvjp_marking_times(core, core_fwd, backward)
        return Solved.from_core(core(y0, ts, diff, tols, probe), vf, diff, y0, ts, options)


class _StepTimes(Recorder):
    """Records (t, dt) of every accepted step, which step wrote each output, and the final
    state (y, z): nothing that grows with the state times the number of steps."""

    def __init__(self, max_steps):
        self.max_steps = max_steps

    def init(self, y0, ts, saved):
        return dict(
            step_t=jnp.zeros((self.max_steps + 1,), ts.dtype),  # last slot: scratch for rejects
            step_dt=jnp.zeros((self.max_steps + 1,), ts.dtype),
            out_step=jnp.full((ts.shape[0],), -1, jnp.int32),  # -1: not written
            final=(y0, saved),
        )

    def on_accept(self, aux, accept, step, t, dt, y, saved):
        slot = jnp.where(accept, step, self.max_steps)
        return {
            **aux,
            "step_t": aux["step_t"].at[slot].set(t),
            "step_dt": aux["step_dt"].at[slot].set(dt),
        }

    def on_output(self, aux, index, step):
        return {**aux, "out_step": aux["out_step"].at[index].set(step)}

    def on_state(self, aux, y, saved):
        return {**aux, "final": (y, saved)}


def _reversible_backward(vf, solver: ReversibleSolver, res, cts, end=False):
    """The walk back; ``end``: see :func:`~ode_jax._adjoint.end_only`."""
    y0, ts, d, tols, probe, stats, aux, ev_step = res
    g_ys = cts[0]
    inject, g_t0 = injector(cts[4], cts[5], ev_step)
    n_acc = stats["num_accepted"]
    step_t, step_dt, out_step = aux["step_t"], aux["step_dt"], aux["out_step"]

    def walk(c):
        n, y1, z1, back = c
        t_n, dt_n = step_t[n], step_dt[n]
        y_n, z_n, k = solver.inverse(vf, t_n, dt_n, d, y1, z1)
        back = pull_back_step(
            solver, vf, d, ts, g_ys, out_step, n, t_n, dt_n, y_n, z_n, back, inject,
            outputs=not end,
        )  # fmt: skip
        return n - 1, y_n, z_n, (*back[:-1], back[-1] + k)

    y_end, z_end = aux["final"]
    back = (
        end_cotangent(g_ys, out_step) if end else tree_zeros_like(y0),
        tree_zeros_like(z_end),
        tree_zeros_like(d),
        jnp.zeros_like(ts),
        last_written_output(out_step),
        jnp.asarray(0, jnp.int32),
    )
    _, y_rec, _, back = jax.lax.while_loop(
        lambda c: c[0] >= 0, walk, (n_acc - 1, y_end, z_end, back)
    )
    a_y, a_z, a_d, g_ts, _, nfe = back
    a_y, a_d, g_ts = pull_back_init(solver, vf, d, ts, y0, a_y, a_z, a_d, g_ts)
    a_y = tree_add(a_y, tree_take(g_ys, 0))
    g_ts = g_ts.at[0].add(g_t0.astype(g_ts.dtype))
    err = tree_max_abs_diff(y_rec, y0)
    values = dict(nfe=nfe, num_steps=n_acc, num_accepted=n_acc)
    if probe.shape[0] == len(PROBE_KEYS):
        values["reconstruction_error"] = err
    return a_y, g_ts, a_d, tree_zeros_like(tols), stats_vector(values, probe)


register_adjoint("reversible", ReversibleAdjoint)
