"""The Runge-Kutta methods as data: tableau consistency, measured convergence order of every
method, and the order of the dense-output interpolants."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _forward_problems import ADAPTIVE, FIXED, ORDERS

import ode_jax
from ode_jax._solvers import dense_eval, dense_weights, get_solver, rk_step

ALL = FIXED + ADAPTIVE


@pytest.mark.parametrize("name", ALL)
def test_tableau_consistency(name):
    m = ode_jax.SOLVERS[name]
    assert m.name == name and m.order == ORDERS[name]
    assert m.c[0] == 0.0
    for i in range(1, m.stages):
        assert sum(m.a[i]) == pytest.approx(m.c[i], abs=1e-14), f"row {i}"
    # Quadrature conditions: necessary for order p.
    c = np.asarray(m.c)
    for k in range(1, m.order + 1):
        assert np.dot(m.b, c ** (k - 1)) == pytest.approx(1 / k, abs=1e-13), f"k={k}"
    # The dense output starts at y0 and ends at y1.
    np.testing.assert_allclose(dense_weights(m, 0.0), 0.0, atol=0)
    np.testing.assert_allclose(dense_weights(m, 1.0), m.b, atol=1e-12)
    if m.adaptive:
        # The embedded solution b - b_err has order p - 1: b_err meets those conditions with 0.
        for k in range(1, m.order):
            assert np.dot(m.b_err, c ** (k - 1)) == pytest.approx(0.0, abs=1e-13), f"k={k}"


def test_fsal_and_evaluations_per_step():
    fsal = {name: ode_jax.SOLVERS[name].fsal for name in ALL}
    assert fsal == {name: name in ADAPTIVE for name in ALL}
    evals = {name: ode_jax.SOLVERS[name].evals_per_step for name in ALL}
    assert evals == dict(euler=1, midpoint=2, heun=2, rk4=4, bosh3=3, dopri5=6, tsit5=6, dopri8=13)


def test_get_solver():
    assert get_solver("Tsit5") is ode_jax.SOLVERS["tsit5"]
    m = ode_jax.SOLVERS["rk4"]
    assert get_solver(m) is m
    with pytest.raises(ValueError, match="valid names are .*'dopri5'.*'tsit5'"):
        get_solver("rk45")


# Step counts n over [0, 10] for y' = y cos t, chosen so errors stay well above round-off.
STEPS = dict(
    euler=[256, 512, 1024],
    midpoint=[128, 256, 512],
    heun=[128, 256, 512],
    rk4=[128, 256, 512],
    bosh3=[64, 128, 256],
    dopri5=[64, 128, 256],
    tsit5=[64, 128, 256],
    dopri8=[32, 48, 64],
)


@pytest.mark.parametrize("name", ALL)
def test_convergence_order(name):
    """Slope of log(error at t=10) against log(dt) for fixed steps, within 0.3 of the order.
    Adaptive tableaux run as fixed-step methods by dropping their error estimate (b_err=None).
    """
    method = dataclasses.replace(ode_jax.SOLVERS[name], b_err=None)
    t1 = 10.0
    solve = jax.jit(
        lambda dt: ode_jax.odeint(
            lambda t, y, args: y * jnp.cos(t), 1.0, jnp.array([0.0, t1]), solver=method, dt0=dt
        )
    )
    dts = t1 / np.asarray(STEPS[name], float)
    errors = []
    for dt, n in zip(dts, STEPS[name]):
        sol = solve(dt)
        assert int(sol.stats["num_steps"]) == n
        errors.append(abs(float(sol.ys[-1]) - np.exp(np.sin(t1))))
    slope = np.polyfit(np.log(dts), np.log(errors), 1)[0]
    shown = ", ".join(f"{e:.1e}" for e in errors)
    print(f"\n{name}: order {ORDERS[name]}, measured slope {slope:.2f} (errors {shown})")
    assert abs(slope - ORDERS[name]) < 0.3


# Local error of the interpolant over one step from the exact solution is O(h^(q+1)) for an
# interpolant of order q. dopri8's continuous extension (the same coefficients as diffrax's) is a
# degree-6 polynomial without extra stages, measured here at order 5.
DENSE_LOCAL_ORDER = dict(bosh3=4, dopri5=5, tsit5=5, dopri8=6)


@pytest.mark.parametrize("name", ADAPTIVE)
def test_dense_output_local_order(name):
    m = ode_jax.SOLVERS[name]
    f = lambda t, y, args: y * jnp.cos(t)
    exact = lambda t: np.exp(np.sin(t))
    t0 = 0.3
    hs = np.array([0.4, 0.2, 0.1, 0.05])
    errors = []
    for h in hs:
        _, _, ks = rk_step(m, f, t0, jnp.asarray(exact(t0)), h, None, None)
        thetas = (0.25, 0.5, 0.7)
        vals = [float(dense_eval(m, jnp.asarray(exact(t0)), ks, h, th)) for th in thetas]
        errors.append(max(abs(v - exact(t0 + th * h)) for v, th in zip(vals, thetas)))
    slope = np.polyfit(np.log(hs), np.log(errors), 1)[0]
    print(f"\n{name}: interpolant local error slope {slope:.2f}")
    assert slope > DENSE_LOCAL_ORDER[name] - 0.3


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if n == "dopri8" else n for n in ADAPTIVE]
)  # dopri8: ~17 s
def test_stage_loop_matches_unrolled(name):
    """A method with its stages in a fori_loop takes the same steps to the same values."""
    from ode_jax._solvers import looped

    method = get_solver(name)
    assert looped(method) is looped(method) and looped(method).stage_loop
    assert looped(looped(method)) is looped(method)

    def f(t, y, args):
        return {"a": -args * y["a"] * jnp.cos(t), "b": y["a"] - 0.3 * y["b"]}

    y0 = {"a": jnp.ones(3), "b": jnp.zeros(3)}
    ts = jnp.linspace(0.0, 3.0, 7)
    # With dt0 given, an FSAL looped method evaluates f(t0, y0) inside its first step (and a
    # rejected step hands its first stage on): same steps, same values, same count.
    for dt0 in (None, 0.05, 2.0):  # 2.0: the first step is rejected
        kw = dict(rtol=1e-8, atol=1e-10, dt0=dt0)
        ref = ode_jax.odeint(f, y0, ts, 0.7, solver=method, **kw)
        sol = ode_jax.odeint(f, y0, ts, 0.7, solver=looped(method), **kw)
        assert int(sol.stats["nfe"]) == int(ref.stats["nfe"])
        assert int(sol.stats["num_rejected"]) == int(ref.stats["num_rejected"])
        if dt0 == 2.0:
            assert int(ref.stats["num_rejected"]) > 0
        for got, want in zip(jax.tree.leaves(sol.ys), jax.tree.leaves(ref.ys)):
            np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name", ["dopri5", "bosh3", "rk4"])
def test_two_point_solve_matches_the_end_of_a_dense_one(name):
    # Two output times take a path without dense output; the steps, and so the end value and
    # the statistics, are the same as when other outputs lie in between.
    def f(t, y, a):
        return jnp.stack([y[1], -a * jnp.sin(y[0])])

    y0, kw = jnp.array([1.0, 0.0]), dict(solver=name, rtol=1e-6, atol=1e-8)
    if name == "rk4":
        kw["dt0"] = 0.5  # fixed steps land on every output: use outputs on the step grid
    two = ode_jax.odeint(f, y0, jnp.array([0.0, 3.0]), 2.0, **kw)
    many = ode_jax.odeint(f, y0, jnp.array([0.0, 1.0, 2.0, 3.0]), 2.0, **kw)
    np.testing.assert_array_equal(two.ys[-1], many.ys[-1])
    for k in ("nfe", "num_steps", "num_accepted"):
        assert int(two.stats[k]) == int(many.stats[k]), k
    short = ode_jax.odeint(f, y0, jnp.array([0.0, 3.0]), 2.0, max_steps=2, throw=False, **kw)
    assert np.all(np.isnan(short.ys[-1])) and int(short.result) != 0
