"""The step-size controller's rule after repeated rejections, and the backward solve's step
control on a field with kinks (ReLU), where the error does not shrink like dt**order."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ode_jax
from ode_jax._control import PIDController


def test_second_rejection_uses_the_observed_order():
    ctl = PIDController(pcoeff=0.0)  # the integral controller, as backward solves use it
    err = jnp.asarray(4.0)
    # The previous attempt, twice as long, had 4x the error: the error behaves like dt**2.
    f = ctl.factor(err, jnp.asarray(1.0), jnp.asarray(False), 5, jnp.asarray(True), (16.0, 2.0))
    np.testing.assert_allclose(f, 0.9 * 4.0 ** (-1 / 2), rtol=1e-12)
    # The textbook factor without the rule, after a first rejection, or on acceptance.
    plain = PIDController(pcoeff=0.0, observed_order=False)
    args = (err, jnp.asarray(1.0), jnp.asarray(False), 5, jnp.asarray(True), (16.0, 2.0))
    np.testing.assert_allclose(plain.factor(*args), 0.9 * 4.0 ** (-1 / 5), rtol=1e-12)
    first = ctl.factor(err, jnp.asarray(1.0), jnp.asarray(False), 5, jnp.asarray(False), (1, 1))
    np.testing.assert_allclose(first, 0.9 * 4.0 ** (-1 / 5), rtol=1e-12)
    # An error falling faster than dt**order is capped at the method's order; slower than
    # dt**2 counts as dt**2 (a non-asymptotic pair must not shrink the step too much).
    fast = ctl.factor(err, 1.0, jnp.asarray(False), 5, jnp.asarray(True), (4.0 * 2.0**9, 2.0))
    np.testing.assert_allclose(fast, 0.9 * 4.0 ** (-1 / 5), rtol=1e-12)
    slow = ctl.factor(err, 1.0, jnp.asarray(False), 5, jnp.asarray(True), (4.4, 2.0))
    np.testing.assert_allclose(slow, 0.9 * 4.0 ** (-1 / 2), rtol=1e-12)


def test_smooth_problem_unchanged():
    # No two rejections in a row: the same steps with and without the rule.
    a = jnp.array([[-0.1, 2.0], [-2.0, -0.1]])
    y0 = jnp.array([2.0, 0.0])
    ts = jnp.linspace(0.0, 10.0, 5)
    sols = [
        ode_jax.odeint(
            lambda t, y, a: (y**3) @ a, y0, ts, a, controller=PIDController(observed_order=o)
        )
        for o in (True, False)
    ]
    assert int(sols[0].stats["num_rejected"]) == int(sols[1].stats["num_rejected"])
    np.testing.assert_array_equal(sols[0].ys, sols[1].ys)


def test_backward_solve_of_relu_field():
    """A ReLU MLP under a summed loss: the adjoint is large and the first backward step (the
    forward one) is rejected twice; the gradient still matches the discrete adjoint's at tight
    tolerances, within a bounded number of backward evaluations."""
    mlp = eqx.nn.MLP(8, 8, 32, 2, activation=jax.nn.relu, key=jax.random.key(0))
    params, static = eqx.partition(mlp, eqx.is_array)
    y0 = jax.random.normal(jax.random.key(1), (64, 8))
    ts = jnp.array([0.0, 1.0])

    def field(t, y, p):
        return jax.vmap(eqx.combine(p, static))(y)

    def loss(pp, adjoint, tol):
        p, probe = pp
        sol = ode_jax.odeint(field, y0, ts, p, rtol=tol, atol=tol, adjoint=adjoint, probe=probe)
        return jnp.sum(sol.ys[-1] ** 2)

    g, probe = jax.grad(loss)((params, ode_jax.make_probe()), "continuous", 1e-3)
    g_ref, _ = jax.grad(loss)((params, ode_jax.make_probe()), "discrete", 1e-9)
    flat = lambda t: jnp.concatenate([x.ravel() for x in jax.tree.leaves(t)])  # noqa: E731
    rel = jnp.linalg.norm(flat(g) - flat(g_ref)) / jnp.linalg.norm(flat(g_ref))
    assert rel < 2e-2
    stats = ode_jax.probe_stats(probe)
    # Measured: 45 backward evaluations (33 without the observed-order rule, which saves
    # evaluations on the ODE-Net block instead); jax.experimental.ode and diffrax
    # BacksolveAdjoint take about 40-45 on the same problem (fwd + bwd: 59 / 62).
    assert float(stats["nfe"]) <= 60


def test_default_controller_uses_the_rule_in_backward_solves_only():
    # A forward solve that starts far too long rejects several times in a row: the default
    # controller steps as observed_order=False there, and the rule (True) changes the steps.
    mlp = eqx.nn.MLP(8, 8, 32, 2, activation=jax.nn.relu, key=jax.random.key(0))
    y0 = jax.random.normal(jax.random.key(1), (64, 8))
    ts = jnp.array([0.0, 1.0])

    def field(t, y, m):
        return 3.0 * jax.vmap(m)(y)

    def controller(observed):
        return PIDController() if observed == "default" else PIDController(observed_order=observed)

    def solve(observed):
        ctl = controller(observed)
        return ode_jax.odeint(field, y0, ts, mlp, dt0=1.0, rtol=1e-8, atol=1e-8, controller=ctl)

    nfe = {o: int(solve(o).stats["nfe"]) for o in ("default", False, True)}
    assert nfe["default"] == nfe[False] != nfe[True]

    # The backward solve of the continuous adjoint: the default is the rule on.
    def backward_nfe(observed):
        ctl = controller(observed)

        def loss(p, probe):
            sol = ode_jax.odeint(
                field, y0, ts, p, rtol=1e-6, atol=1e-6, controller=ctl, probe=probe
            )
            return jnp.sum(sol.ys[-1] ** 2)

        g = jax.grad(loss, argnums=1)(mlp, ode_jax.make_probe())
        return int(ode_jax.probe_stats(g)["nfe"])

    b = {o: backward_nfe(o) for o in ("default", False, True)}
    assert b["default"] == b[True] != b[False]
    with pytest.raises(ValueError, match="observed_order"):
        PIDController(observed_order=1)


def test_rejected_steps_are_the_rejections_the_controller_saw():
    # The loop derives num_rejected as attempted minus accepted steps; check it against the
    # accept flags the controller was handed, on the spiral (which rejects many steps).
    seen = []

    class Watch(PIDController):
        def factor(self, err, prev_err, accept, order, prev_rejected=False, last=None):
            jax.debug.callback(lambda a: seen.append(bool(a)), accept)
            return super().factor(err, prev_err, accept, order, prev_rejected, last)

    a = jnp.array([[-0.1, 2.0], [-2.0, -0.1]])
    sol = ode_jax.odeint(
        lambda t, y, a: (y**3) @ a, jnp.array([2.0, 0.0]), jnp.linspace(0.0, 25.0, 3), a,
        solver="dopri5", controller=Watch(),
    )  # fmt: skip
    jax.block_until_ready(sol.ys)
    assert int(sol.stats["num_steps"]) == len(seen)
    assert int(sol.stats["num_rejected"]) == seen.count(False) > 0
    assert int(sol.stats["num_accepted"]) == seen.count(True)


def test_default_pcoeff_damps_forward_solves_only():
    # pcoeff=None: 0.2 in forward solves (the spiral rejects fewer steps than under the plain
    # integral controller), 0 in the continuous adjoint's backward solves unless set.
    from ode_jax._continuous import _backward_controller

    a = jnp.array([[-0.1, 2.0], [-2.0, -0.1]])
    y0 = jnp.array([2.0, 0.0])
    ts = jnp.linspace(0.0, 25.0, 50)

    def stats(ctl):
        sol = ode_jax.odeint(lambda t, y, a: (y**3) @ a, y0, ts, a, rtol=1e-6, controller=ctl)
        return int(sol.stats["nfe"]), int(sol.stats["num_rejected"])

    default, pi, integral = (stats(PIDController(pcoeff=p)) for p in (None, 0.2, 0.0))
    assert default == pi and default[1] < integral[1]
    assert _backward_controller(PIDController()).pcoeff == 0.0
    assert _backward_controller(PIDController(pcoeff=0.3)).pcoeff == 0.3
    with pytest.raises(ValueError, match="pcoeff=-0.1 must be None or a number"):
        PIDController(pcoeff=-0.1)
    assert PIDController(pcoeff=np.float32(0.2)).pcoeff == np.float32(0.2)  # numpy scalars too
