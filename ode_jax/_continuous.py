"""The continuous adjoint (Chen et al. 2018, Algorithm 1) as a ``custom_vjp`` rule.

The forward pass keeps only the outputs. The backward pass solves the augmented system
[y, a_y, a_theta] backwards between consecutive output times with the same machinery (so it
can be differentiated again), restarting y from the stored output at each output time and
adding that output's cotangent to a_y. Time gradients use the identity
d/dt[a(t) . f(t, y(t))] = a . df/dt along the adjoint, which gives dL/dt_0 = -a(t_0) . f(t_0, y_0)
and dL/dt_i = g_i . f(t_i, y_i) (i >= 1) exactly; it equals integrating the paper's a_t
component but costs no extra augmented state.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from ._adjoint import (
    PROBE_KEYS,
    AbstractAdjoint,
    LoopOptions,
    Solved,
    _evaluate_recorded,
    defvjp_marking_times,
    event_cond,
    not_differentiable_twice,
    outputs,
    positive_or_none,
    register_adjoint,
    run_loop,
    split_field,
    stats_vector,
    tree_add,
    tree_dot,
    tree_max_abs_diff,
    tree_take,
    tree_zeros_like,
)
from ._control import propagates_nonfinite, rms_norm
from ._dense import interpolate_recorded
from ._loop import Tolerances
from ._solution import raise_if_failed
from ._solver import AbstractSolver, tree_where


class ContinuousAdjoint(AbstractAdjoint):
    """The paper's adjoint method: O(1) memory in the number of steps.

    Args:
        rtol, atol: tolerances of the backward solve (default: the forward ones).
        solver: solver of the backward solve, a name or object (default: the forward one).
        max_steps: bound on the steps of each backward solve between two output times
            (default: the forward ``max_steps``).
        seminorm: leave the parameter adjoint out of the backward error norm (Kidger et al.
            2021), usually saving backward steps.
        interpolate: take y(t) in the backward pass from the forward solve's dense output
            instead of solving for it backwards in time (an "interpolating adjoint"). Needed
            for stiff problems, whose decaying modes grow without bound when y is integrated
            backwards; memory then grows with the number of forward steps (they are stored,
            up to ``max_steps``), and the gradient cannot be differentiated again.

    The gradient is that of the exact solution, computed to the backward tolerances: it differs
    from the gradient of the computed solution by the solver error. It can be differentiated
    again (the backward pass is itself a solve under this adjoint).
    """

    rtol: float | jax.Array | None = None
    atol: float | jax.Array | None = None
    solver: str | AbstractSolver | None = None
    max_steps: int | None = None
    seminorm: bool = False
    interpolate: bool = False

    def __post_init__(self):
        positive_or_none("ContinuousAdjoint", "rtol", self.rtol)
        positive_or_none("ContinuousAdjoint", "atol", self.atol)
        positive_or_none("ContinuousAdjoint", "max_steps", self.max_steps, integer=True)
        if self.solver is not None:
            from ._solvers import get_solver

            self.solver = get_solver(self.solver)
        for name in ("seminorm", "interpolate"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(
                    f"ContinuousAdjoint: {name} must be a bool, got {getattr(self, name)!r}"
                )

    def check(self, solver, dt0):
        backward = self.solver or solver
        if not backward.adaptive and dt0 is None:
            raise ValueError(
                f"ContinuousAdjoint(solver={backward.name!r}) is fixed-step: pass dt0 to odeint"
            )

    def solve(self, f, y0, ts, args, tols, probe, options):
        vf, diff = split_field(f, y0, ts, args, event_cond(options), options.jacobian)
        tdtype = ts.dtype
        adj_tols = (
            tols.rtol if self.rtol is None else jnp.asarray(self.rtol, tdtype),
            tols.atol if self.atol is None else jnp.asarray(self.atol, tdtype),
        )

        run_options = dataclasses.replace(options, dense=True) if self.interpolate else options

        @jax.custom_vjp
        def core(y0, ts, d, tols, adj_tols, probe):
            return outputs(run_loop(vf, y0, ts, d, tols, run_options))

        def core_fwd(y0, ts, d, tols, adj_tols, probe):
            # Calling `core` (not the loop) keeps the residual ys differentiable through this
            # same rule, so grad-of-grad works.
            out = core(y0, ts, d, tols, adj_tols, probe)
            res = (out[0], ts, d, tols, adj_tols, probe, out[3], _reached(out, ts))
            trajectory = (out[4], out[1]["num_accepted"]) if self.interpolate else None
            return out, (res, trajectory)

        def backward(res, cts):
            # The times' gradient costs f at every output time: computed only when ts carries
            # a tangent. Cotangents of the recorded steps (dense output, events) are not used:
            # this adjoint differentiates evaluations through `_evaluate` instead.
            res, trajectory, times = res
            return self._backward(vf, options, res, cts[0], times is not None, trajectory)

        if self.interpolate:
            backward = not_differentiable_twice(
                backward,
                "ode_jax: ContinuousAdjoint(interpolate=True) cannot be differentiated twice; "
                "use interpolate=False for grad-of-grad",
            )

        defvjp_marking_times(core, core_fwd, backward)
        out = core(y0, ts, diff, tols, adj_tols, probe)
        # The recorded steps carry no gradient here (see _evaluate).
        out = (*out[:4], jax.lax.stop_gradient(out[4]), jax.lax.stop_gradient(out[5]))
        data = (y0, diff, tols, adj_tols)
        evaluator = functools.partial(_evaluate, self, vf, options)
        return Solved.from_core(out, vf, diff, y0, ts, options, data, evaluator)

    def _backward(self, vf, options: LoopOptions, res, g_ys, times=True, trajectory=None):
        """The VJP of the solve. ``times``: whether to compute the gradient of ``ts`` (one
        evaluation of f per output time) or leave it zero; ``trajectory``: the forward's
        recorded steps (dense buffers, count), for the interpolating adjoint."""
        ys, ts, d, tols, adj_tols, probe, dt_forward, (s_reach, y_reach) = res
        # Outputs past the last time reached (after an event) were never computed: the
        # backward solve starts where the forward one stopped.
        beyond = ts > s_reach
        ts = jnp.where(beyond, s_reach, ts)
        ys = jax.tree.map(
            lambda buf, v: jnp.where(beyond.reshape((-1,) + (1,) * v.ndim), v[None], buf),
            ys,
            y_reach,
        )
        n = ts.shape[0]
        y0 = tree_take(ys, 0)
        pack, unpack, parts = _augmented_packing(y0, d)

        def backward_field(s, state, d_):
            """The augmented system in the time s = -t: d/ds [y, a_y, a_p] = [-f, a_y df/dy,
            a_y df/dp] (the paper's dynamics [f, -a df/dy, -a df/dp] with time reversed)."""
            y, a_y, _ = unpack(state)
            if trajectory is not None:
                # y(t) from the forward solve's dense output: y's slot stays constant.
                bufs, count = trajectory
                inf = jnp.asarray(jnp.inf, ts.dtype)
                y = interpolate_recorded(options.solver, bufs, count, -s, -inf, inf)
            fy, pull = jax.vjp(lambda y_, dd: vf(-s, y_, dd), y, d_)
            gy, gd = pull(a_y)
            dy = jax.tree.map(jnp.negative, fy)
            if trajectory is not None:
                dy = jax.tree.map(jnp.zeros_like, dy)
            out = pack(dy, gy, gd)
            return jax.tree.map(lambda o, x: o.astype(x.dtype), out, state)

        # As torchdiffeq: the max over the parts [y, a_y, a_params] of each part's RMS, so the
        # many parameter-adjoint entries neither dilute nor dominate the error of y and a_y.
        # The seminorm drops a_params (Kidger et al. 2021), which can then only remove steps;
        # it still carries their non-finiteness (0 * x is NaN exactly where x is not finite),
        # so a blown-up parameter adjoint is rejected, not integrated silently.
        @propagates_nonfinite
        def mixed_norm(err):
            e_y, e_a, e_d = parts(err)
            return jnp.maximum(jnp.maximum(rms_norm(e_y), rms_norm(e_a)), rms_norm(e_d))

        @propagates_nonfinite
        def seminorm(err):
            e_y, e_a, e_d = parts(err)
            blown_up = sum(jnp.real(jnp.sum(0 * x)) for x in jax.tree.leaves(e_d))
            return jnp.maximum(rms_norm(e_y), rms_norm(e_a)) + blown_up

        # One copy of the augmented field (a VJP of f) in the program, not one per stage.
        solver = (self.solver or options.solver).looped()
        max_steps = self.max_steps or options.max_steps
        backward_options = LoopOptions(
            solver=solver,
            controller=_backward_controller(options.controller),
            norm=seminorm if self.seminorm else mixed_norm,
            max_steps=max_steps,
        )
        # The backward solve is differentiated (grad-of-grad) with the same adjoint settings;
        # its tolerances arrive through b_tols (residuals, never closed-over tracers).
        backward_adjoint = dataclasses.replace(
            self, rtol=None, atol=None, solver=solver, max_steps=max_steps
        )
        adj_rtol, adj_atol = adj_tols

        def interval(carry, i):
            a_y, a_d, stats, result, dt, recon = carry
            y_i, g_i = tree_take(ys, i), tree_take(g_ys, i)
            a_y = tree_add(a_y, g_i)
            g_t = tree_dot(g_i, vf(ts[i], y_i, d)) if times else jnp.zeros((), ts.dtype)
            # The solve from ts[i] back to ts[i-1], in the time s = -t (solves step forwards).
            # It is called directly, not through the public odeint: its arguments are valid by
            # construction, and skipping odeint's run-time checks keeps the program small.
            b_tols = Tolerances(
                rtol=adj_rtol,
                atol=adj_atol,
                dt0=dt if solver.adaptive else tols.dt0,
                dtmax=tols.dtmax,
            )
            solved_b = backward_adjoint.solve(
                backward_field,
                pack(y_i, a_y, a_d),
                -jnp.stack([ts[i], ts[i - 1]]),
                d,
                b_tols,
                jnp.zeros_like(probe),
                backward_options,
            )
            ys_b, stats_b, result_b = solved_b.ys, solved_b.stats, solved_b.result
            dt_next = solved_b.dt_next
            y_back, a_y, a_d = unpack(tree_take(ys_b, -1))
            stats = stats + stats_vector({**stats_b, "nfe": stats_b["nfe"] + int(times)}, stats)
            result = jnp.maximum(result, result_b)
            err = tree_max_abs_diff(y_back, tree_take(ys, i - 1)).astype(recon.dtype)
            recon = jnp.maximum(recon, jax.lax.stop_gradient(err))
            return (a_y, a_d, stats, result, _usable_dt(dt_next, ts, i), recon), g_t

        # The backward solve starts from the forward's proposed step, shortened: its error norm
        # takes the largest of the state's and the adjoint's errors, so it is at least the
        # error the forward's controller aimed at with that step. At the full proposal the
        # first backward step of benchmark (a2) was rejected (error 1.41); at 0.85 of it,
        # (a2)'s backward NFE went 63 -> 57 and (a), (b), (b2) and (c) kept theirs.
        carry = (
            tree_zeros_like(y0),
            tree_zeros_like(d),
            jnp.zeros_like(probe),
            jnp.asarray(0, jnp.int32),
            _BACKWARD_START * _usable_dt(dt_forward, ts, n - 1)
            if n > 1
            else jnp.zeros((), ts.dtype),
            jnp.zeros((), probe.dtype),
        )
        if n > 1:
            carry, g_t_rev = jax.lax.scan(interval, carry, jnp.arange(n - 1, 0, -1))
            a_y, a_d, stats, result, _, recon = carry
            g_t0 = -tree_dot(a_y, vf(ts[0], y0, d)) if times else jnp.zeros((), ts.dtype)
            g_ts = jnp.concatenate([g_t0[None].astype(ts.dtype), g_t_rev[::-1].astype(ts.dtype)])
            stats = stats + stats_vector({"nfe": int(times)}, stats)
        else:
            a_y, a_d, stats, result, _, recon = carry
            g_ts = jnp.zeros_like(ts)
        stats = _with_reconstruction(stats, recon)
        a_y = tree_add(a_y, tree_take(g_ys, 0))
        a_y = raise_if_failed(a_y, result, prefix="ode_jax backward (adjoint) solve")
        return a_y, g_ts, a_d, tree_zeros_like(tols), tree_zeros_like(adj_tols), stats


def _evaluate(adjoint, vf, options, solved, s, at_event):
    """The solution at time s, differentiated as the exact solution at s: the value comes from
    the recorded steps, the gradient from a backward solve from s to s0."""
    value = jax.lax.stop_gradient(_evaluate_recorded(options.solver, solved, s, at_event))
    y0, d, tols, adj_tols = solved.data
    s0 = solved.span[0]
    dt_guess = solved.dt_next

    dt_guess = jax.lax.stop_gradient(dt_guess)

    @jax.custom_vjp
    def point(s, y0, d, s0, tols, adj_tols, value, dt_guess):
        return value

    def point_fwd(s, y0, d, s0, tols, adj_tols, value, dt_guess):
        return value, (s, y0, d, s0, tols, adj_tols, value, dt_guess)

    def point_bwd(res, ct):
        s, y0, d, s0, tols, adj_tols, value, dt_guess = res
        ys = jax.tree.map(lambda a, b: jnp.stack([a, b.astype(a.dtype)]), y0, value)
        g_ys = jax.tree.map(lambda c: jnp.stack([jnp.zeros_like(c), c]), ct)
        ts = jnp.stack([s0, jnp.asarray(s, s0.dtype)])
        probe = jnp.zeros((len(PROBE_KEYS),), s0.dtype)
        res_b = (ys, ts, d, tols, adj_tols, probe, dt_guess, (ts[1], value))
        a_y, g_ts, a_d, _, _, _ = adjoint._backward(vf, options, res_b, g_ys)
        g_s = g_ts[1].astype(jnp.result_type(s))
        zeros = tree_zeros_like
        return (g_s, a_y, a_d, g_ts[0], zeros(tols), zeros(adj_tols), zeros(value), zeros(dt_guess))

    point.defvjp(point_fwd, point_bwd)
    return point(s, y0, d, s0, tols, adj_tols, value, dt_guess)


def _reached(out, ts):
    """(the last time the solve reached, the state there): an event's, or the end."""
    ys, event = out[0], out[5]
    s_end, y_end = ts[-1], tree_take(ys, -1)
    if event is None:
        return s_end, y_end
    hit = event["happened"]
    return jnp.where(hit, event["time"], s_end), tree_where(hit, event["state"], y_end)


def _with_reconstruction(stats, recon):
    """Write the reconstruction error into its slot of the probe cotangent (if it has one)."""
    i = PROBE_KEYS.index("reconstruction_error")
    if stats.shape[0] <= i:
        return stats
    return stats.at[i].set(recon.astype(stats.dtype))


_BACKWARD_START = 0.85  # the first backward step, as a fraction of the forward's proposal


def _backward_controller(controller):
    """The forward's controller with its backward-solve defaults: the observed-order rule on
    unless the user turned it off (``observed_order=None`` means: in backward solves only),
    and the integral controller unless the user set ``pcoeff`` (None means: 0.2 in forward
    solves only)."""
    changes = {}
    if getattr(controller, "observed_order", False) is None:
        changes["observed_order"] = True
    if getattr(controller, "pcoeff", 0.0) is None:
        changes["pcoeff"] = 0.0
    return dataclasses.replace(controller, **changes) if changes else controller


def _usable_dt(dt, ts, i):
    dt = jax.lax.stop_gradient(jnp.asarray(dt, ts.dtype))
    fallback = 1e-2 * jnp.abs(ts[i] - ts[i - 1])
    return jnp.where(jnp.isfinite(dt) & (dt > 0), dt, fallback)


def _augmented_packing(y, d):
    """(pack, unpack, parts) between the augmented state (y, a_y, a_params) and what the solver
    steps; ``parts`` splits a state-shaped array into its three parts as cheaply as it can.

    When every leaf of y and the parameters shares one dtype, the state is one flat vector, as
    in jax.experimental.ode: each stage's linear combination, error norm and output write is
    then one operation instead of one per leaf, which makes the backward solve's program
    several times smaller (and faster to compile) for a many-leaved model. ``parts`` then gives
    three flat slices (the error norms reduce each in one pass, not one pass per parameter).
    Otherwise the state stays the pytree (y, a_y, a_params).
    """
    leaves = jax.tree.leaves((y, d))
    if len({leaf.dtype for leaf in leaves}) != 1:
        return (lambda *parts: parts), (lambda state: state), (lambda state: state)
    _, unravel_y = ravel_pytree(y)
    _, unravel_d = ravel_pytree(d)
    n_y = sum(leaf.size for leaf in jax.tree.leaves(y))
    dtype = leaves[0].dtype

    def pack(y_, a_y, a_d):
        return jnp.concatenate([ravel_pytree(x)[0].astype(dtype) for x in (y_, a_y, a_d)])

    def parts(state):
        return state[:n_y], state[n_y : 2 * n_y], state[2 * n_y :]

    def unpack(state):
        p_y, p_a, p_d = parts(state)
        return unravel_y(p_y), unravel_y(p_a), unravel_d(p_d)

    return pack, unpack, parts


register_adjoint("continuous", ContinuousAdjoint)
