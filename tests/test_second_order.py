"""Second derivatives through the discrete adjoint: reverse over reverse and forward over
reverse, against jax's own odeint test cases, a hand-unrolled fixed-step solve, closed forms and
the continuous adjoint; and clear errors where it cannot be differentiated twice.

Second derivatives compile large programs (10-30 s each here): the default run keeps one case
of each kind; ``-m slow`` runs all of them."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import ode_jax

# The settings of jax.experimental.ode.odeint, which jax's tests/ode_test.py differentiates.
JAX_ODE = dict(solver="dopri5", rtol=1.4e-8, atol=1.4e-8)
TOL = 1e-3  # jax's tolerance for these checks in float64


def jax_style(func):
    """A field in jax.experimental.ode's convention, func(y, t, *args), as ode_jax's f(t, y, args)
    solved with the discrete adjoint: the arguments of check_grads are (y0, ts, *args)."""

    @jax.jit
    def integrate(y0, ts, *args):
        field = lambda t, y, a: func(y, t, *a)  # noqa: E731
        return ode_jax.odeint(field, y0, ts, args, adjoint="discrete", **JAX_ODE).ys

    return integrate


# --- jax's own ode_test.py cases, whose order-2 checks fail under jax.experimental.ode's
# --- interface for any loop of run-time length -------------------------------------------------


@pytest.mark.slow  # ~25 s; the other order-2 cases run by default
def test_pendulum_grads_order_2():
    def pend(y, _t, m, g):
        theta, omega = y[0], y[1]
        return jnp.stack([omega, -m * omega - g * jnp.sin(theta)])

    y0 = jnp.array([np.pi - 0.1, 0.0])
    ts = jnp.linspace(0.0, 1.0, 11)
    check_grads(jax_style(pend), (y0, ts, 0.25, 9.8), modes=["rev"], order=2, atol=TOL, rtol=TOL)


@pytest.mark.slow
def test_pytree_state_grads_order_2():
    def dynamics(y, _t):
        return jax.tree.map(jnp.negative, y)

    y0 = (jnp.array(-0.1), jnp.array([[[0.1]]]))
    ts = jnp.linspace(0.0, 1.0, 11)
    check_grads(jax_style(dynamics), (y0, ts), modes=["rev"], order=2, atol=TOL, rtol=TOL)


@pytest.mark.slow
def test_time_dependent_pendulum_grads_order_2():
    def dynamics(y, t):
        return jnp.stack([y[1] * -t, -1 * y[1] - 9.8 * jnp.sin(y[0])])

    y0 = jnp.array([np.pi - 0.1, 0.0])
    ts = jnp.linspace(0.0, 1.0, 11)
    check_grads(jax_style(dynamics), (y0, ts), modes=["rev"], order=2, atol=TOL, rtol=TOL)


@pytest.mark.slow
def test_decay_grads_order_2():
    def decay(y, t, arg1, arg2):
        return -jnp.sqrt(t) - y + arg1 - jnp.mean((y + arg2) ** 2)

    rng = np.random.RandomState(0)
    args = (jnp.asarray(rng.randn(3)), jnp.asarray(rng.randn(3)))
    y0 = jnp.asarray(rng.randn(3))
    ts = jnp.linspace(0.1, 0.2, 4)
    check_grads(jax_style(decay), (y0, ts, *args), modes=["rev"], order=2, atol=TOL, rtol=TOL)


@pytest.mark.slow
@pytest.mark.parametrize("y0_range, args", [((0.1, 0.9), (0.1, 0.2)), ((1.1, 10.9), (0.1, 0.3))])
def test_swoop_grads_order_2(y0_range, args):
    def swoop(y, t, arg1, arg2):
        return y - jnp.sin(t) - jnp.cos(t) * arg1 + arg2

    ts = jnp.array([0.1, 0.2])
    y0 = jnp.linspace(*y0_range, 10)
    check_grads(jax_style(swoop), (y0, ts, *args), modes=["rev"], order=2, atol=TOL, rtol=TOL)


# --- exactness ---------------------------------------------------------------------------------


def _field(t, y, p):
    return jnp.stack([y[1], -p[0] * y[1] - p[1] * jnp.sin(y[0]) * jnp.cos(t)])


def _rk4_unrolled(y0, p, ts, dt):
    """The classical RK4 map, stepping by dt and landing on every output time, unrolled in
    Python: JAX differentiates it directly (the reference for the fixed-step solve)."""
    ys, y, t = [y0], y0, float(ts[0])
    for t_out in ts[1:]:
        while t < float(t_out) - 1e-12:
            h = min(dt, float(t_out) - t)
            k1 = _field(t, y, p)
            k2 = _field(t + h / 2, y + h / 2 * k1, p)
            k3 = _field(t + h / 2, y + h / 2 * k2, p)
            k4 = _field(t + h, y + h * k3, p)
            y, t = y + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4), t + h
        ys.append(y)
    return jnp.stack(ys)


def _weighted(ys):
    return jnp.sum(jnp.arange(1.0, ys.shape[0] + 1)[:, None] * jnp.sin(ys) ** 2)


@pytest.mark.parametrize(
    "checkpoints, mode",
    [
        (2, "fwd-over-rev"),
        pytest.param(2, "rev-over-rev", marks=pytest.mark.slow),
        pytest.param(None, "fwd-over-rev", marks=pytest.mark.slow),
        pytest.param(None, "rev-over-rev", marks=pytest.mark.slow),
    ],
)
def test_fixed_step_hessian_equals_the_unrolled_map(checkpoints, mode):
    ts = np.array([0.0, 0.35, 1.0, 1.3])
    adjoint = ode_jax.DiscreteAdjoint(checkpoints=checkpoints)

    def loss(y0, p):
        sol = ode_jax.odeint(_field, y0, ts, p, solver="rk4", dt0=0.1, adjoint=adjoint)
        return _weighted(sol.ys)

    def ref(y0, p):
        return _weighted(_rk4_unrolled(y0, p, ts, 0.1))

    y0, p = jnp.array([0.4, -0.3]), jnp.array([0.3, 2.0])
    want = jax.hessian(ref, argnums=(0, 1))(y0, p)
    hess = jax.hessian if mode == "fwd-over-rev" else _rev_rev
    got = jax.jit(hess(loss, argnums=(0, 1)))(y0, p)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(g, w, rtol=1e-10, atol=1e-12)


def _rev_rev(fun, argnums):
    return jax.jacrev(jax.grad(fun, argnums=argnums), argnums=argnums)


@pytest.mark.slow
def test_adaptive_hessian_matches_closed_form_and_continuous_adjoint():
    # y' = -a y: y(t) = y0 exp(-a t). L = sum_i y(t_i)^2 over three times.
    ts = np.array([0.0, 0.5, 1.0, 2.0])

    def loss(y0, a, adjoint):
        sol = ode_jax.odeint(lambda t, y, a: -a * y, y0, ts, a, adjoint=adjoint, rtol=1e-10)
        return jnp.sum(sol.ys**2)

    def exact(y0, a):
        return jnp.sum((y0 * jnp.exp(-a * jnp.asarray(ts))) ** 2)

    args = (jnp.asarray(1.3), jnp.asarray(0.6))
    want = np.array(jax.hessian(exact, argnums=(0, 1))(*args))
    discrete = functools.partial(loss, adjoint=ode_jax.DiscreteAdjoint(checkpoints=4))
    continuous = functools.partial(loss, adjoint="continuous")
    got_fwd = np.array(jax.hessian(discrete, argnums=(0, 1))(*args))
    got_rev = np.array(_rev_rev(discrete, argnums=(0, 1))(*args))
    got_cont = np.array(_rev_rev(continuous, argnums=(0, 1))(*args))
    np.testing.assert_allclose(got_fwd, want, rtol=1e-7)
    np.testing.assert_allclose(got_rev, got_fwd, rtol=1e-12)
    np.testing.assert_allclose(got_cont, got_fwd, rtol=1e-7)


@pytest.mark.slow
def test_hessian_vector_product_under_jit_and_vmap():
    ts = np.linspace(0.0, 2.0, 5)

    def loss(y0, p):
        return _weighted(ode_jax.odeint(_field, y0, ts, p, adjoint="discrete", rtol=1e-9).ys)

    y0, p = jnp.array([0.4, -0.3]), jnp.array([0.3, 2.0])
    vs = jnp.array([[1.0, 0.0], [0.3, -2.0], [0.0, 1.0]])

    @jax.jit
    def hvp(v):
        return jax.jvp(lambda y: jax.grad(loss)(y, p), (y0,), (v,))[1]

    hess = jax.hessian(loss)(y0, p)
    np.testing.assert_allclose(jax.vmap(hvp)(vs), vs @ hess.T, rtol=1e-10, atol=1e-12)
    # Per-example Hessians of a batch of solves, each with its own steps.
    y0s = jnp.array([[0.4, -0.3], [1.2, 0.5]])
    batch = jax.vmap(jax.hessian(loss), in_axes=(0, None))(y0s, p)
    for i in range(2):
        np.testing.assert_allclose(batch[i], jax.hessian(loss)(y0s[i], p), rtol=1e-9)


@pytest.mark.slow
def test_second_derivative_with_respect_to_times():
    # d2/dt^2 of y(t) = y0 exp(-a t) at the last output: a^2 y(t).
    def y_end(t1):
        ts = jnp.stack([jnp.asarray(0.0), t1])
        sol = ode_jax.odeint(lambda t, y, a: -a * y, 1.5, ts, 0.7, adjoint="discrete", rtol=1e-11)
        return sol.ys[-1]

    got = jax.grad(jax.grad(y_end))(jnp.asarray(1.2))
    np.testing.assert_allclose(got, 0.49 * 1.5 * np.exp(-0.7 * 1.2), rtol=1e-6)


# --- where it cannot -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "options, why",
    [
        (dict(dense=True), "dense output"),
        pytest.param(
            dict(event=ode_jax.Event(lambda t, y, a: y - 0.5)), "event", marks=pytest.mark.slow
        ),
        pytest.param(dict(solver="kvaerno5"), "kvaerno5", marks=pytest.mark.slow),
    ],
)
def test_second_derivative_refused_with_the_reason(options, why):
    def y1(a):
        sol = ode_jax.odeint(lambda t, y, a: -a * y, 1.0, np.array([0.0, 1.0]), a,
                             adjoint="discrete", **options)  # fmt: skip
        return sol.ys[-1]

    with pytest.raises(NotImplementedError, match=f"discrete adjoint.*{why}"):
        jax.grad(jax.grad(y1))(0.5)
    with pytest.raises(NotImplementedError, match="adjoint='continuous'"):
        jax.jvp(jax.grad(y1), (0.5,), (1.0,))


@pytest.mark.slow
@pytest.mark.parametrize("solver", ["rodas5", "dopri8", "reversible"])
def test_hessian_with_other_solvers(solver):
    ts = np.array([0.0, 0.5, 1.0])
    method = ode_jax.reversible("tsit5") if solver == "reversible" else solver

    def loss(y0, a):
        sol = ode_jax.odeint(lambda t, y, a: -a * y, y0, ts, a, solver=method,
                             adjoint="discrete", rtol=1e-9, atol=1e-12)  # fmt: skip
        return jnp.sum(sol.ys**2)

    def exact(y0, a):
        return jnp.sum((y0 * jnp.exp(-a * jnp.asarray(ts))) ** 2)

    args = (jnp.asarray(1.3), jnp.asarray(0.6))
    want = np.array(jax.hessian(exact, argnums=(0, 1))(*args))
    np.testing.assert_allclose(np.array(jax.hessian(loss, argnums=(0, 1))(*args)), want, rtol=1e-7)
