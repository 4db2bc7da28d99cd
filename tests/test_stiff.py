"""Stiff solvers (kvaerno3, kvaerno5: ESDIRK with simplified Newton; rodas5: Rosenbrock):
convergence order, stiff reference problems against scipy's Radau, gradients through both
adjoints against finite differences and diffrax, statistics and failure messages."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ode_jax
from benchmarks.stiff_problems import PROBLEMS
from ode_jax._loop import Tolerances

STIFF = ["kvaerno3", "kvaerno5", "rodas5"]
ORDER = dict(kvaerno3=3, kvaerno5=5, rodas5=5)


def _ycos(t, y, a):
    return y * jnp.cos(t)


@pytest.mark.parametrize("name", STIFF)
def test_convergence_order(name):
    """Fixed steps of each method (driving solver.step directly; ESDIRK with a fresh Jacobian
    per step and a tight Newton tolerance), slope of log error against log step size."""
    solver = ode_jax.SOLVERS[name]
    if name.startswith("kvaerno"):
        solver = dataclasses.replace(solver, reuse_rate=0.0, newton_max_iter=50)
    errs, ns = [], np.array([16, 32, 64])
    for n in ns:
        dt = 5.0 / n
        t, y = jnp.asarray(0.0), jnp.asarray(1.0)
        kw = {"tols": Tolerances(jnp.asarray(1e-11), jnp.asarray(1e-11))}
        state, _ = solver.init(_ycos, t, y, None, **(kw if solver.needs_tolerances else {}))
        step = jax.jit(lambda t, y, s, dt=dt: solver.step(_ycos, t, y, jnp.asarray(dt), None, s))
        for _ in range(n):
            y1, _, info, new, _ = step(t, y, state)
            assert int(solver.failure(new)) == 0
            state, y, t = solver.select_state(True, state, new, info), y1, t + dt
        errs.append(abs(float(y) - np.exp(np.sin(5.0))))
    slope = -np.polyfit(np.log(ns), np.log(errs), 1)[0]
    assert slope > ORDER[name] - 0.3, (slope, errs)


SLOW = pytest.mark.slow


@pytest.mark.parametrize("name", ["kvaerno5", "rodas5", pytest.param("kvaerno3", marks=SLOW)])
@pytest.mark.parametrize("problem", ["robertson", "van_der_pol", "hires"])
def test_stiff_reference_problems_against_radau(problem, name):
    p = PROBLEMS[problem]
    sol = ode_jax.odeint(
        p.f, jnp.asarray(p.y0), [0.0, p.t1], p.args, solver=name, rtol=p.rtol, atol=p.atol,
        max_steps=20000,
    )  # fmt: skip
    ref = np.asarray(p.reference)
    # Global error against Radau at 1e-12, in units of the local tolerance.
    err = np.abs(np.asarray(sol.ys[-1]) - ref) / (p.atol + p.rtol * np.abs(ref))
    assert np.max(err) < 300, (np.max(err), sol.stats)
    stats = {k: int(v) for k, v in sol.stats.items()}
    assert stats["num_lu"] >= stats["num_steps"] > 0 and stats["num_jacobians"] > 0
    if name == "kvaerno5":
        assert stats["num_jacobians"] < stats["num_steps"]  # reused across steps
    if name == "rodas5":
        assert stats["num_jacobians"] == stats["num_steps"]  # one per step
    print(f"\n{problem} {name}: max err {np.max(err):.1f} tol units, {stats}")


def test_explicit_solver_gives_up_where_implicit_ones_do_not():
    p = PROBLEMS["van_der_pol"]
    sol = ode_jax.odeint(
        p.f, jnp.asarray(p.y0), [0.0, p.t1], p.args, solver="tsit5", rtol=1e-6, atol=1e-6,
        max_steps=5000, throw=False,
    )  # fmt: skip
    assert int(sol.result) == ode_jax.RESULTS.max_steps_reached
    ok = ode_jax.odeint(
        p.f, jnp.asarray(p.y0), [0.0, p.t1], p.args, solver="rodas5", rtol=1e-6, atol=1e-6,
        max_steps=5000,
    )  # fmt: skip
    assert int(ok.stats["num_steps"]) < 1000


def _robertson_y1(k, name, adjoint, t1=40.0):
    p = PROBLEMS["robertson"]
    sol = ode_jax.odeint(
        p.f, jnp.asarray(p.y0), [0.0, t1], k, solver=name, rtol=1e-9, atol=1e-12,
        adjoint=adjoint, max_steps=20000,
    )  # fmt: skip
    return sol.ys[-1]


@pytest.mark.parametrize("adjoint", ["discrete", pytest.param("interpolating", marks=SLOW)])
# kvaerno5 (~17 s) is checked against diffrax by default (test_robertson_gradients_match_diffrax).
@pytest.mark.parametrize(
    "name", [pytest.param("kvaerno5", marks=SLOW), "rodas5", pytest.param("kvaerno3", marks=SLOW)]
)
def test_robertson_rate_gradients_against_finite_differences(name, adjoint):
    if adjoint == "interpolating":
        adjoint = ode_jax.ContinuousAdjoint(interpolate=True)
    k = jnp.asarray([0.04, 3e7, 1e4])
    # d y(T) / d log k: well scaled for rates spanning nine orders of magnitude.
    w = jnp.asarray([1.0, 1e4, 1.0])  # weights: y2 is ~1e-5 of the others

    def loss(logk):
        return jnp.sum(w * _robertson_y1(jnp.exp(logk), name, adjoint))

    g = jax.grad(loss)(jnp.log(k))
    eps = 1e-5
    fd = []
    for i in range(3):
        e = jnp.zeros(3).at[i].set(eps)
        fd.append((loss(jnp.log(k) + e) - loss(jnp.log(k) - e)) / (2 * eps))
    np.testing.assert_allclose(g, np.asarray(fd), rtol=2e-3, atol=1e-7)


def test_robertson_gradients_match_diffrax():
    diffrax = pytest.importorskip("diffrax")
    p = PROBLEMS["robertson"]
    k = jnp.asarray([0.04, 3e7, 1e4])

    def ours(k):
        return jnp.sum(_robertson_y1(k, "kvaerno5", "discrete"))

    def theirs(k):
        sol = diffrax.diffeqsolve(
            diffrax.ODETerm(p.f), diffrax.Kvaerno5(), 0.0, 40.0, None, jnp.asarray(p.y0), k,
            stepsize_controller=diffrax.PIDController(rtol=1e-9, atol=1e-12), max_steps=20000,
        )  # fmt: skip
        return jnp.sum(sol.ys[-1])

    np.testing.assert_allclose(jax.grad(ours)(k), jax.grad(theirs)(k), rtol=1e-3, atol=1e-12)


def test_backward_probe_counts_jacobians_of_the_implicit_backward_solve():
    p = PROBLEMS["robertson"]

    def loss(k, probe):
        sol = ode_jax.odeint(
            p.f, jnp.asarray(p.y0), [0.0, 10.0], k, solver="kvaerno5", rtol=1e-6, atol=1e-10,
            probe=probe, adjoint=ode_jax.ContinuousAdjoint(interpolate=True),
        )  # fmt: skip
        return jnp.sum(sol.ys[-1])

    _, g_probe = jax.grad(loss, argnums=(0, 1))(jnp.asarray(p.args), ode_jax.make_probe())
    stats = ode_jax.probe_stats(g_probe)
    assert int(stats["num_jacobians"]) > 0 and int(stats["num_lu"]) >= int(stats["num_steps"])


def test_singular_jacobian_is_a_clear_error():
    # f = sqrt(y) at y = 0: the Jacobian is infinite at the start, at every step size.
    def f(t, y, a):
        return jnp.sqrt(y)

    for name in STIFF:
        with pytest.raises(Exception, match="iteration matrix .* was singular"):
            jax.block_until_ready(ode_jax.odeint(f, jnp.zeros(1), [0.0, 1.0], solver=name).ys)


@pytest.mark.parametrize(
    "name", ["rodas5", pytest.param("kvaerno5", marks=SLOW), pytest.param("kvaerno3", marks=SLOW)]
)
def test_interpolating_continuous_adjoint_on_robertson(name):
    # Solving Robertson's y backwards in time blows up (its fast modes grow backwards); the
    # interpolating continuous adjoint reads y from the forward dense output instead.
    k = jnp.asarray([0.04, 3e7, 1e4])
    w = jnp.asarray([1.0, 1e4, 1.0])
    adjoint = ode_jax.ContinuousAdjoint(interpolate=True)

    def loss(logk, adjoint):
        return jnp.sum(w * _robertson_y1(jnp.exp(logk), name, adjoint))

    g = jax.grad(loss)(jnp.log(k), adjoint)
    ref = jax.grad(loss)(jnp.log(k), "discrete")
    np.testing.assert_allclose(g, ref, rtol=1e-4, atol=1e-9)
    with pytest.raises(NotImplementedError, match="interpolate=True"):
        jax.grad(jax.grad(lambda a: loss(jnp.log(k) * a, adjoint)))(1.0)


def test_user_supplied_jacobian():
    p = PROBLEMS["van_der_pol"]

    def jac(t, y, mu):
        return jnp.array([[0.0, 1.0], [-2 * mu * y[0] * y[1] - 1, mu * (1 - y[0] ** 2)]])

    calls = []

    def counted(t, y, mu):
        calls.append(1)  # traced once per compile: proves it is the one used
        return jac(t, y, mu)

    for name in ("kvaerno5", "rodas5"):
        sol = ode_jax.odeint(
            p.f, jnp.asarray(p.y0), [0.0, p.t1], p.args, solver=name, rtol=p.rtol, atol=p.atol,
            max_steps=20000, jacobian=counted,
        )  # fmt: skip
        np.testing.assert_allclose(sol.ys[-1], p.reference, rtol=1e-3, atol=1e-5)
    assert calls
    # Backwards in time too (the Jacobian is oriented like the field).
    back = ode_jax.odeint(
        p.f, sol.ys[-1], [p.t1, p.t1 - 1.0], p.args, solver="rodas5", jacobian=jac, rtol=1e-8,
        atol=1e-8,
    )  # fmt: skip
    ref = ode_jax.odeint(
        p.f, sol.ys[-1], [p.t1, p.t1 - 1.0], p.args, solver="rodas5", rtol=1e-8, atol=1e-8
    )
    np.testing.assert_allclose(back.ys[-1], ref.ys[-1], rtol=1e-6)
    with pytest.raises(ValueError, match="jacobian= is for the implicit solvers"):
        ode_jax.odeint(p.f, jnp.asarray(p.y0), [0.0, 1.0], p.args, jacobian=jac)
