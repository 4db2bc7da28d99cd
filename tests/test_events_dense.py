"""Dense output (sol.evaluate), saved steps and differentiable terminal events, under every
adjoint, jit and vmap."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ode_jax

ADJOINTS = ["continuous", "discrete"]
# Where the discrete variant checks the same event logic, the continuous one runs with -m slow.
ADJOINTS_CONTINUOUS_SLOW = [pytest.param("continuous", marks=pytest.mark.slow), "discrete"]
TIGHT = dict(rtol=1e-10, atol=1e-12)


def _fall(t, y, g):
    return jnp.stack([y[1], -g])


def _osc(t, y, w):
    return jnp.stack([y[1], -(w**2) * y[0]])


FLOOR = ode_jax.Event(lambda t, y, g: y[0], direction=-1)


def _fall_time(h0, v0, g):
    # h0 + v0 t - g t^2 / 2 = 0, the positive root.
    return (v0 + np.sqrt(v0**2 + 2 * g * h0)) / g


@pytest.mark.parametrize("adjoint", ADJOINTS)
def test_falling_body_event_time_value_and_gradient(adjoint):
    h0, v0, g = 10.0, 2.0, 9.81

    def solve(h0, v0, g):
        return ode_jax.odeint(
            _fall, jnp.stack([h0, v0]), np.array([0.0, 1.0, 5.0]), g, event=FLOOR,
            adjoint=adjoint, **TIGHT,
        )  # fmt: skip

    sol = solve(h0, v0, g)
    t_star = _fall_time(h0, v0, g)
    assert bool(sol.event_happened)
    np.testing.assert_allclose(sol.event_time, t_star, rtol=1e-13)
    np.testing.assert_allclose(sol.event_state[0], 0.0, atol=1e-12)
    np.testing.assert_allclose(sol.event_state[1], v0 - g * t_star, rtol=1e-12)
    # Outputs after the event hold the event state; the one before is untouched.
    np.testing.assert_allclose(sol.ys[1], [h0 + v0 - g / 2, v0 - g], rtol=1e-12)
    np.testing.assert_array_equal(sol.ys[2], sol.event_state)

    grads = jax.grad(lambda *p: solve(*p).event_time, argnums=(0, 1, 2))(h0, v0, g)
    eps = 1e-6
    for i, got in enumerate(grads):
        p = [h0, v0, g]
        hi, lo = list(p), list(p)
        hi[i] += eps
        lo[i] -= eps
        fd = (_fall_time(*hi) - _fall_time(*lo)) / (2 * eps)
        np.testing.assert_allclose(got, fd, rtol=1e-7)
    # And the event state's gradient: d v(t*) / d g = -t* - g dt*/dg.
    dv = jax.grad(lambda g: solve(h0, v0, g).event_state[1])(g)
    np.testing.assert_allclose(dv, -t_star - g * float(grads[2]), rtol=1e-8)


def test_event_time_gradient_wrt_initial_time():
    # Starting later shifts the event by the same amount.
    def t_star(t0):
        ts = jnp.stack([t0, t0 + 5.0])
        return ode_jax.odeint(_fall, jnp.array([10.0, 0.0]), ts, 9.81, event=FLOOR).event_time

    np.testing.assert_allclose(jax.grad(t_star)(0.3), 1.0, rtol=1e-8)


@pytest.mark.parametrize("direction, first", [(None, np.pi / 2), (-1, np.pi / 2), (1, 1.5 * np.pi)])
def test_oscillator_zero_crossings_and_direction(direction, first):
    # y = cos t: crosses zero downwards at pi/2, upwards at 3 pi/2.
    ev = ode_jax.Event(lambda t, y, w: y[0], direction=direction)
    sol = ode_jax.odeint(_osc, jnp.array([1.0, 0.0]), [0.0, 10.0], 1.0, event=ev, **TIGHT)
    # The root of the dense output is exact to round-off; the solution itself is accurate to
    # about rtol (1e-10): measured 1.0e-12 relative error at pi / 2.
    np.testing.assert_allclose(sol.event_time, first, rtol=1e-11)


@pytest.mark.parametrize("adjoint", ADJOINTS + ["reversible"])
def test_oscillator_event_gradient_wrt_frequency(adjoint):
    # y = cos(w t) first crosses zero at pi / (2 w): d t* / d w = -pi / (2 w^2).
    ev = ode_jax.Event(lambda t, y, w: y[0])
    solver = ode_jax.reversible("tsit5") if adjoint == "reversible" else "tsit5"

    def t_star(w):
        return ode_jax.odeint(
            _osc, jnp.array([1.0, 0.0]), [0.0, 10.0], w, event=ev, adjoint=adjoint,
            solver=solver, **TIGHT,
        ).event_time  # fmt: skip

    np.testing.assert_allclose(jax.grad(t_star)(1.7), -np.pi / (2 * 1.7**2), rtol=1e-7)


def test_no_event_in_interval():
    sol = ode_jax.odeint(_fall, jnp.array([100.0, 0.0]), [0.0, 1.0, 2.0], 9.81, event=FLOOR)
    assert not bool(sol.event_happened)
    assert float(sol.event_time) == np.inf
    np.testing.assert_allclose(sol.ys[-1, 0], 100.0 - 9.81 * 2, rtol=1e-10)
    np.testing.assert_array_equal(sol.event_state, sol.ys[-1])
    g = jax.grad(lambda h: ode_jax.odeint(_fall, jnp.stack([h, 0.0]), [0.0, 2.0], 9.81,
                                           event=FLOOR).ys[-1, 0])(100.0)  # fmt: skip
    np.testing.assert_allclose(g, 1.0, rtol=1e-10)


@pytest.mark.parametrize("adjoint", ADJOINTS_CONTINUOUS_SLOW)
def test_vmap_each_element_has_its_own_event(adjoint):
    h0s = jnp.array([1.0, 5.0, 20.0, 200.0])  # the last one never lands within 5 s

    def run(h0):
        sol = ode_jax.odeint(
            _fall, jnp.stack([h0, 0.0]), [0.0, 5.0], 9.81, event=FLOOR, adjoint=adjoint, **TIGHT
        )
        return sol.event_time, sol.event_happened

    times, happened = jax.jit(jax.vmap(run))(h0s)
    assert happened.tolist() == [True, True, True, False]
    np.testing.assert_allclose(times[:3], np.sqrt(2 * np.asarray(h0s[:3]) / 9.81), rtol=1e-12)
    grads = jax.vmap(jax.grad(lambda h: run(h)[0]))(h0s[:3])
    np.testing.assert_allclose(grads, 1 / np.sqrt(2 * np.asarray(h0s[:3]) * 9.81), rtol=1e-8)


def test_backwards_solve_event():
    # Integrating y = t backwards from t = 3: y crosses 1 at t = 1 (downwards in the solve).
    ev = ode_jax.Event(lambda t, y, a: y - 1.0)
    sol = ode_jax.odeint(lambda t, y, a: jnp.ones_like(y), 3.0, [3.0, 0.0], event=ev)
    np.testing.assert_allclose(sol.event_time, 1.0, rtol=1e-12)


@pytest.mark.parametrize("adjoint", ADJOINTS + ["reversible"])
def test_dense_evaluate_values_and_gradients(adjoint):
    solver = ode_jax.reversible("dopri5") if adjoint == "reversible" else "dopri5"

    def solve(y0, w):
        return ode_jax.odeint(
            _osc, y0, [0.0, 4.0], w, dense=True, adjoint=adjoint, solver=solver, **TIGHT
        )

    w, y0 = 1.3, jnp.array([1.0, 0.0])
    sol = solve(y0, w)
    t = jnp.linspace(0.0, 4.0, 17)
    np.testing.assert_allclose(sol.evaluate(t)[:, 0], np.cos(w * t), atol=1e-8)
    assert np.isnan(float(sol.evaluate(4.5)[0]))  # outside the solved interval

    def at(y0, w, t):
        return solve(y0, w).evaluate(t)[0]

    g_y0, g_w, g_t = jax.grad(at, argnums=(0, 1, 2))(y0, w, 2.5)
    np.testing.assert_allclose(g_y0, [np.cos(w * 2.5), np.sin(w * 2.5) / w], atol=1e-7)
    np.testing.assert_allclose(g_w, -2.5 * np.sin(w * 2.5), rtol=1e-6)
    np.testing.assert_allclose(g_t, -w * np.sin(w * 2.5), rtol=1e-6)


@pytest.mark.parametrize("name, order", [("dopri5", 4), ("tsit5", 4), ("bosh3", 3)])
def test_dense_output_converges_at_the_interpolant_order(name, order):
    # Fixed steps (the error estimate dropped), evaluated mid-step: error ~ dt^(order + 1)
    # locally; over a fixed horizon the global error ~ dt^order.
    m = ode_jax.SOLVERS[name]
    fixed = ode_jax.RungeKutta(m.name, m.order, m.c, m.a, m.b, None, m.dense)
    errs = []
    ns = np.array([16, 32, 64])
    for n in ns:
        sol = ode_jax.odeint(
            lambda t, y, a: y * jnp.cos(t), 1.0, [0.0, 4.0], solver=fixed, dt0=4.0 / n, dense=True
        )
        t = (np.arange(n) + 0.37) * 4.0 / n
        errs.append(np.max(np.abs(np.asarray(sol.evaluate(t)) - np.exp(np.sin(t)))))
    slope = -np.polyfit(np.log(ns), np.log(errs), 1)[0]
    assert slope > order - 0.3, slope


@pytest.mark.parametrize("adjoint", ADJOINTS_CONTINUOUS_SLOW)
def test_save_steps(adjoint):
    sol = ode_jax.odeint(
        _osc, jnp.array([1.0, 0.0]), [0.0, 3.0], 2.0, save_steps=True, adjoint=adjoint,
        max_steps=256, rtol=1e-8, atol=1e-10,
    )  # fmt: skip
    n = int(sol.stats["num_accepted"])
    assert sol.step_ts.shape == (256,) and sol.step_ys.shape == (256, 2)
    assert np.all(np.diff(sol.step_ts[:n]) > 0) and float(sol.step_ts[n - 1]) == 3.0
    assert np.all(np.isinf(sol.step_ts[n:])) and np.all(np.isnan(sol.step_ys[n:]))
    np.testing.assert_allclose(sol.step_ys[:n, 0], np.cos(2.0 * sol.step_ts[:n]), atol=1e-7)

    def total(w):
        s = ode_jax.odeint(
            _osc, jnp.array([1.0, 0.0]), [0.0, 3.0], w, save_steps=True, adjoint=adjoint,
            max_steps=256, rtol=1e-8, atol=1e-10,
        )  # fmt: skip
        k = s.stats["num_accepted"]
        return jnp.sum(
            jnp.where(jnp.arange(256, dtype=jnp.int32) < k, jnp.nan_to_num(s.step_ys[:, 0]), 0.0)
        )

    ts = np.asarray(sol.step_ts[:n])
    np.testing.assert_allclose(jax.grad(total)(2.0), np.sum(-ts * np.sin(2.0 * ts)), rtol=1e-5)


def test_bad_event_and_dense_use_are_clear_errors():
    with pytest.raises(ValueError, match="direction must be None, \\+1 or -1"):
        ode_jax.Event(lambda t, y, a: y[0], direction=2)
    with pytest.raises(ValueError, match="real floating-point scalar"):
        ode_jax.odeint(_fall, jnp.ones(2), [0.0, 1.0], 9.81, event=ode_jax.Event(lambda t, y, a: y))
    with pytest.raises(TypeError, match="ode_jax.Event"):
        ode_jax.odeint(_fall, jnp.ones(2), [0.0, 1.0], 9.81, event=lambda t, y, a: y[0])
    sol = ode_jax.odeint(_fall, jnp.ones(2), [0.0, 1.0], 9.81)
    with pytest.raises(ValueError, match="dense=True"):
        sol.evaluate(0.5)


def test_event_with_an_equinox_module_as_args():
    import equinox as eqx

    mlp = eqx.nn.MLP("scalar", "scalar", 4, 1, key=jax.random.PRNGKey(0))
    mlp = jax.tree.map(lambda x: 0.01 * x if eqx.is_inexact_array(x) else x, mlp)

    def t_star(m):
        return ode_jax.odeint(
            lambda t, y, m: -y + m(y),
            1.0,
            [0.0, 5.0],
            m,
            event=ode_jax.Event(lambda t, y, m: y - 0.5),
        ).event_time

    assert abs(float(t_star(mlp)) - np.log(2.0)) < 0.05
    g = eqx.filter_grad(t_star)(mlp)
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(g))
