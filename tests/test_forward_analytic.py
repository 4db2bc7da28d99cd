"""The forward solve against closed-form solutions: every method, both directions in time, pytree,
float32 and complex states, dense output between steps, and fixed steps landing on output times."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _forward_problems import ADAPTIVE, FIXED, PROBLEMS, jit_solve, problem_ts, tol_scale

import ode_jax

RTOL, ATOL = 1e-8, 1e-10


@pytest.mark.parametrize("method", ADAPTIVE)
@pytest.mark.parametrize("problem", list(PROBLEMS))
def test_adaptive_matches_analytic(problem, method):
    solve = jit_solve(problem, method, RTOL, ATOL)
    for backwards in (False, True):
        f, y_start, ts, exact = problem_ts(problem, 9, backwards)
        sol = solve(y_start, ts)
        assert sol.ys.shape == exact.shape
        np.testing.assert_array_equal(sol.ts, ts)
        np.testing.assert_array_equal(sol.ys[0], y_start)
        # Global error is a modest multiple of the per-step tolerance; solved backwards the
        # logistic equation amplifies every error by up to e^(t1 - t0) (its solutions converge
        # forwards).
        allowed = 30 * tol_scale(exact, RTOL, ATOL)
        if problem == "logistic" and backwards:
            allowed *= 200
        np.testing.assert_allclose(sol.ys, exact, rtol=0, atol=allowed, err_msg=f"{backwards=}")
        assert int(sol.result) == 0
        stats = {k: int(v) for k, v in sol.stats.items()}
        assert stats["num_steps"] == stats["num_accepted"] + stats["num_rejected"]


@pytest.mark.parametrize("method", ADAPTIVE)
def test_dense_output_between_steps(method):
    """Many output times between steps come from the interpolant, to about the tolerance, and
    do not change the steps taken (they only read the dense output)."""
    solve = jit_solve("ycos", method, RTOL, ATOL)
    for backwards in (False, True):
        f, y_start, ts, exact = problem_ts("ycos", 301, backwards)
        sol = solve(y_start, ts)
        coarse = solve(y_start, ts[::50])  # same end points, 7 outputs
        assert int(sol.stats["num_accepted"]) < 300 or method == "bosh3"
        assert {k: int(v) for k, v in sol.stats.items()} == {
            k: int(v) for k, v in coarse.stats.items()
        }
        np.testing.assert_array_equal(sol.ys[::50], coarse.ys)
        np.testing.assert_allclose(sol.ys, exact, rtol=0, atol=30 * tol_scale(exact, RTOL, ATOL))


@pytest.mark.parametrize("method", FIXED)
def test_fixed_step_matches_analytic(method):
    f, y_start, ts, exact = problem_ts("ycos", 7)
    sol = ode_jax.odeint(f, y_start, ts, solver=method, dt0=1e-3, max_steps=8000)
    order = ode_jax.SOLVERS[method].order
    np.testing.assert_allclose(sol.ys, exact, rtol=0, atol=20 * 1e-3**order)


def test_pytree_state():
    fd, yd, _, _, ed = PROBLEMS["decay"]
    fc, yc, _, _, ec = PROBLEMS["ycos"]
    fl, yl, _, _, el = PROBLEMS["linear"]

    def f(t, y, args):
        return {
            "decay": fd(t, y["decay"], args),
            "pair": (fc(t, y["pair"][0], args), fl(t, y["pair"][1], args)),
        }

    y0 = {"decay": yd, "pair": (yc, yl)}
    ts = np.linspace(0.0, 3.0, 5)
    sol = ode_jax.odeint(f, y0, ts, rtol=RTOL, atol=ATOL)
    assert jax.tree.structure(sol.ys) == jax.tree.structure(y0)
    exact = {"decay": ed(ts, 0.0, yd), "pair": (ec(ts, 0.0, yc), el(ts, 0.0, yl))}
    for got, want in zip(jax.tree.leaves(sol.ys), jax.tree.leaves(exact)):
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=0, atol=30 * tol_scale(want, RTOL, ATOL))


@pytest.mark.parametrize("ts_dtype", [jnp.float32, jnp.float64])
@pytest.mark.parametrize("method", ["tsit5", "rk4"])
def test_float32_state_stays_float32(method, ts_dtype):
    f, y0, t0, t1, exact = PROBLEMS["linear"]
    ts = jnp.linspace(t0, t1, 6, dtype=ts_dtype)
    y0 = jnp.asarray(y0, jnp.float32)
    sol = ode_jax.odeint(f, y0, ts, solver=method, rtol=1e-5, atol=1e-6, dt0=0.01)
    assert sol.ys.dtype == jnp.float32
    assert sol.ts.dtype == ts_dtype
    assert all(v.dtype == jnp.int32 for v in sol.stats.values())
    want = exact(np.asarray(ts, np.float64), t0, np.asarray(y0, np.float64))
    np.testing.assert_allclose(sol.ys, want, rtol=0, atol=1e-4)


@pytest.mark.parametrize("method", ["tsit5", "rk4"])
def test_single_time_returns_y0(method):
    y0 = {"a": jnp.array([1.0, 2.0]), "b": jnp.array(3.0)}
    calls = []
    f = lambda t, y, args: jax.tree.map(lambda x: -x, y)
    sol = ode_jax.odeint(f, y0, jnp.array([0.5]), solver=method, dt0=0.1)
    assert sol.ys["a"].shape == (1, 2) and sol.ys["b"].shape == (1,)
    np.testing.assert_array_equal(sol.ys["a"][0], y0["a"])
    np.testing.assert_array_equal(sol.ys["b"][0], y0["b"])
    assert {k: int(v) for k, v in sol.stats.items()} == dict.fromkeys(sol.stats, 0)
    assert not calls


def test_complex_state():
    omega = 2.0
    ts = jnp.linspace(0.0, 3.0, 7)
    y0 = jnp.array([1.0 + 0.5j, -0.3j])
    sol = ode_jax.odeint(lambda t, y, args: 1j * omega * y - 0.1 * y, y0, ts, rtol=RTOL, atol=ATOL)
    assert sol.ys.dtype == jnp.complex128
    want = y0[None] * np.exp((1j * omega - 0.1) * np.asarray(ts))[:, None]
    np.testing.assert_allclose(sol.ys, want, rtol=0, atol=30 * tol_scale(want, RTOL, ATOL))


def test_fixed_step_lands_on_every_output_time():
    """rk4 with dt0=0.1 over ts=[0, 0.25, 1]: steps 0.1, 0.1, 0.05 then 0.1 x 7, 0.05, exactly as
    a hand-written RK4 over that step sequence (and no sliver step from rounding)."""
    f = lambda t, y, args: y * jnp.cos(t)
    ts = jnp.array([0.0, 0.25, 1.0])
    sol = ode_jax.odeint(f, jnp.array(1.5), ts, solver="rk4", dt0=0.1)

    def rk4(t, y, h):
        g = lambda t, y: y * np.cos(t)
        k1 = g(t, y)
        k2 = g(t + h / 2, y + h / 2 * k1)
        k3 = g(t + h / 2, y + h / 2 * k2)
        k4 = g(t + h, y + h * k3)
        return y + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)

    y, t, want = 1.5, 0.0, [1.5]
    for target in (0.25, 1.0):
        while target - t > 1e-12:
            h = min(0.1, target - t)
            y, t = rk4(t, y, h), t + h
        want.append(y)
    assert int(sol.stats["num_steps"]) == 11
    np.testing.assert_allclose(sol.ys, want, rtol=1e-14, atol=0)


@pytest.mark.parametrize("t1, dt, steps", [(1.0, 0.1, 10), (3.0, 0.1, 30), (1.0, 1 / 3, 3)])
def test_fixed_step_count_has_no_rounding_sliver(t1, dt, steps):
    sol = ode_jax.odeint(lambda t, y, args: -y, 1.0, jnp.array([0.0, t1]), solver="euler", dt0=dt)
    assert int(sol.stats["num_steps"]) == steps
    np.testing.assert_allclose(sol.ys[-1], (1 - dt) ** steps, rtol=1e-12)


@pytest.mark.parametrize("short, steps", [(0.005, 3), (0.02, 4)])
def test_adaptive_step_ending_within_one_percent_of_the_end_lands_on_it(short, steps):
    # y' = 0 has no error: from dt0 = 1 the steps grow tenfold (1, 10, 100) and the third
    # ends at t = 111. An end 0.5% of that step further is reached by stretching the third
    # step (as Hairer's DOPRI5 does, up to 1%); 2% further takes a fourth step.
    t1 = 111.0 + short * 100.0
    zero = lambda t, y, args: jnp.zeros_like(y)  # noqa: E731
    sol = ode_jax.odeint(zero, 1.0, jnp.array([0.0, t1]), solver="dopri5", dt0=1.0)
    assert int(sol.stats["num_steps"]) == steps
    assert int(sol.stats["num_rejected"]) == 0


@pytest.mark.parametrize("method", FIXED + ADAPTIVE)
def test_nfe_counts_every_evaluation(method):
    """stats["nfe"] is the number of times f actually ran (counted by a host callback)."""
    count = [0]

    def f(t, y, args):
        jax.debug.callback(lambda: count.__setitem__(0, count[0] + 1))
        return y * jnp.cos(t)

    sol = ode_jax.odeint(
        f,
        jnp.array(1.5),
        jnp.linspace(0.0, 6.0, 5),
        solver=method,
        dt0=0.05 if method in FIXED else None,
    )
    jax.block_until_ready(sol.ys)
    assert int(sol.stats["nfe"]) == count[0] > 0


def test_adaptive_tableau_as_fixed_step_method():
    """A RungeKutta object with b_err=None is stepped with a fixed dt0 (used by the order tests)."""
    fixed = dataclasses.replace(ode_jax.SOLVERS["dopri5"], b_err=None)
    f, y_start, ts, exact = problem_ts("ycos", 4)
    sol = ode_jax.odeint(f, y_start, ts, solver=fixed, dt0=0.01)
    assert int(sol.stats["num_rejected"]) == 0
    assert int(sol.stats["num_steps"]) == 600
    np.testing.assert_allclose(sol.ys, exact, rtol=0, atol=1e-10)
