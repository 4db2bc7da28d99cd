"""Algebraically reversible solvers and the reversible adjoint: exact gradients of the computed
solution (equal to the discrete adjoint's) with memory flat in the number of steps."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ode_jax

MLP = eqx.nn.MLP(2, 2, 16, 2, activation=jnp.tanh, key=jax.random.PRNGKey(0))
Y0 = jax.random.normal(jax.random.PRNGKey(1), (4, 2))


def _mlp_field(t, y, m):
    return jax.vmap(m)(y)


def _spiral_field(t, y, A):
    return (y**3) @ A


A_SPIRAL = jnp.array([[-0.1, 2.0], [-2.0, -0.1]])


def _flat(tree):
    return jnp.concatenate([jnp.ravel(x) for x in jax.tree.leaves(tree)])


def _grads(problem, adjoint, solver, ts, **kw):
    f, y0, args = problem

    def loss(p):
        a, y = p
        sol = ode_jax.odeint(f, y, ts, a, solver=solver, adjoint=adjoint, **kw)
        return jnp.sum(sol.ys**2) + jnp.sum(jnp.sin(sol.ys[-1]))

    return _flat(eqx.filter_grad(loss)((args, y0)))


PROBLEMS = {
    "mlp": ((_mlp_field, Y0, MLP), np.linspace(0.0, 3.0, 4)),
    "spiral": ((_spiral_field, jnp.array([2.0, 0.0]), A_SPIRAL), np.linspace(0.0, 5.0, 11)),
}


# By default tsit5 on the spiral; the rest (14-31 s each) with -m slow.
@pytest.mark.parametrize(
    "name, base",
    [("spiral", "tsit5")]
    + [
        pytest.param(name, base, marks=pytest.mark.slow)
        for name in sorted(PROBLEMS)
        for base in ("tsit5", "dopri5", "bosh3")
        if (name, base) != ("spiral", "tsit5")
    ],
)
def test_reversible_adjoint_equals_discrete_adjoint(name, base):
    problem, ts = PROBLEMS[name]
    solver = ode_jax.reversible(base)
    kw = dict(rtol=1e-6, atol=1e-8)
    rev = _grads(problem, "reversible", solver, ts, **kw)
    disc = _grads(problem, "discrete", solver, ts, **kw)
    scale = float(jnp.max(jnp.abs(disc)))
    np.testing.assert_allclose(rev, disc, rtol=0, atol=1e-10 * scale)
    # And both are within the solver tolerance of the true gradient (continuous, tight).
    cont = _grads(problem, "continuous", "tsit5", ts, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(rev, cont, rtol=0, atol=1e-3 * scale)


def test_reversible_solve_matches_exact_solution_and_reports_reconstruction():
    ts = np.linspace(0.0, 2.0, 5)
    sol = ode_jax.odeint(
        lambda t, y, k: -k * y, 1.0, ts, 0.7, solver=ode_jax.reversible("tsit5"), rtol=1e-9,
        atol=1e-11,
    )  # fmt: skip
    np.testing.assert_allclose(sol.ys, np.exp(-0.7 * ts), rtol=1e-7)

    def loss(k, probe):
        s = ode_jax.odeint(
            lambda t, y, k: -k * y, 1.0, ts, k, solver=ode_jax.reversible("tsit5"),
            adjoint=ode_jax.ReversibleAdjoint(), probe=probe, rtol=1e-9, atol=1e-11,
        )  # fmt: skip
        return s.ys[-1]

    g, g_probe = jax.grad(loss, argnums=(0, 1))(0.7, ode_jax.make_probe())
    np.testing.assert_allclose(g, -2.0 * np.exp(-1.4), rtol=1e-7)
    stats = ode_jax.probe_stats(g_probe)
    assert 0 <= float(stats["reconstruction_error"]) < 1e-13
    assert int(stats["num_steps"]) > 0 and int(stats["nfe"]) > 0


@pytest.mark.parametrize("base, order", [("heun", 2), ("rk4", 4), ("bosh3", 3)])
def test_fixed_step_reversible_keeps_the_base_order(base, order):
    def err(n):
        solver = ode_jax.reversible(dataclass_fixed(base))
        sol = ode_jax.odeint(
            lambda t, y, a: y * jnp.cos(t), 1.0, np.array([0.0, 5.0]), solver=solver, dt0=5.0 / n
        )
        return abs(float(sol.ys[-1]) - np.exp(np.sin(5.0)))

    ns = np.array([64, 128, 256])
    slope = -np.polyfit(np.log(ns), np.log([err(n) for n in ns]), 1)[0]
    assert slope > order - 0.3, slope


def dataclass_fixed(name):
    m = ode_jax.SOLVERS[name]
    return ode_jax.RungeKutta(m.name, m.order, m.c, m.a, m.b, None, None)


def test_reversible_inverse_rebuilds_the_step_start():
    solver = ode_jax.reversible("dopri5", coupling=0.9)
    y, z = jnp.array([1.0, -0.5]), jnp.array([1.01, -0.49])
    args = A_SPIRAL
    y1, _, _, z1, _ = solver.step(_spiral_field, 0.3, y, 0.2, args, z)
    y_back, z_back, _ = solver.inverse(_spiral_field, 0.3, 0.2, args, y1, z1)
    np.testing.assert_allclose(y_back, y, rtol=0, atol=1e-14)
    np.testing.assert_allclose(z_back, z, rtol=0, atol=1e-14)


def test_every_adjoint_and_vmap_jit():
    solver = ode_jax.reversible("tsit5")
    ts = np.linspace(0.0, 1.0, 3)

    def loss(y0, adjoint):
        sol = ode_jax.odeint(_spiral_field, y0, ts, A_SPIRAL, solver=solver, adjoint=adjoint)
        return jnp.sum(sol.ys[-1] ** 2)

    y0s = jnp.array([[2.0, 0.0], [1.0, 0.5], [0.5, -1.0]])
    ref = jnp.stack([jax.grad(loss)(y, "discrete") for y in y0s])
    for adjoint in ("reversible", "continuous"):
        per = jax.jit(jax.vmap(jax.grad(loss), in_axes=(0, None)), static_argnums=1)(y0s, adjoint)
        np.testing.assert_allclose(per, ref, rtol=1e-4 if adjoint == "continuous" else 1e-10)


def test_errors_name_the_fix():
    with pytest.raises(ValueError, match=r"needs a reversible solver.*reversible\('tsit5'\)"):
        ode_jax.odeint(_spiral_field, jnp.ones(2), [0.0, 1.0], A_SPIRAL, adjoint="reversible")
    with pytest.raises(ValueError, match=r"coupling must be in \(0, 1\]"):
        ode_jax.reversible("tsit5", coupling=1.5)
    with pytest.raises(ValueError, match="explicit Runge-Kutta"):
        ode_jax.reversible(ode_jax.reversible("tsit5"))
    with pytest.raises(NotImplementedError, match="reversible adjoint cannot be differentiated"):

        def y1(k):
            return ode_jax.odeint(
                lambda t, y, k: -k * y, 1.0, [0.0, 1.0], k, solver=ode_jax.reversible("tsit5"),
                adjoint="reversible",
            ).ys[-1]  # fmt: skip

        jax.grad(jax.grad(y1))(0.5)


def _temp_bytes(adjoint, t1):
    params, static = eqx.partition(MLP, eqx.is_array)

    def loss(params, y0):
        m = eqx.combine(params, static)
        f = lambda t, y, m: y @ jnp.array([[-0.01, 2.0], [-2.0, -0.01]]) + 0.01 * jax.vmap(m)(y)
        sol = ode_jax.odeint(
            f, y0, jnp.array([0.0, t1]), m, solver=ode_jax.reversible("tsit5"), adjoint=adjoint,
            max_steps=20000,
        )  # fmt: skip
        return jnp.sum(sol.ys[-1] ** 2), sol.stats["num_steps"]

    grad = jax.jit(jax.grad(loss, has_aux=True))
    _, steps = grad(params, Y0)
    return grad.lower(params, Y0).compile().memory_analysis().temp_size_in_bytes, int(steps)


@pytest.mark.slow  # ~25 s
def test_reversible_adjoint_memory_flat_in_number_of_steps():
    short, n_short = _temp_bytes("reversible", 10.0)
    long, n_long = _temp_bytes("reversible", 100.0)
    disc, _ = _temp_bytes("discrete", 100.0)
    print(f"\nsteps {n_short} -> {n_long}; reversible temp {short} -> {long}; discrete {disc}")
    assert n_long > 8 * n_short
    assert long == short
    assert long < disc  # no checkpointed states
