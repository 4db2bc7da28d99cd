"""The bouncing-ball experiment: its --smoke run recovers g and e, and gradients through the
bounce times match closed forms (free fall) and finite differences (drag MLP), both adjoints."""

import json

import equinox as eqx
import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import pytest

from configs.bouncing_ball import BouncingBallConfig
from experiments import bouncing_ball as bb

ADJOINTS = ["continuous", "discrete"]
# Where both variants take long, the continuous one runs with -m slow (the continuous adjoint
# is covered by the other tests of this file).
ADJOINTS_CONTINUOUS_SLOW = [pytest.param("continuous", marks=pytest.mark.slow), "discrete"]
H0 = 10.0


def _solve_kwargs(adjoint):
    return dict(solver="tsit5", rtol=1e-10, atol=1e-12, adjoint=adjoint, max_steps=256)


def _ball(g, e, drag=None):
    return bb.Ball(jnp.log(g), jnp.log(e / (1 - e)), drag)


@pytest.mark.slow  # ~50 s; the event gradients are tested below
def test_smoke_run_recovers_g_and_e(tmp_path):
    metrics = bb.main(["--smoke", "--out", str(tmp_path), "--no-progress"])
    files = {p.name for p in tmp_path.iterdir()}
    assert {"metrics.json", "trajectory.png", "loss.png", "parameters.png"} <= files
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["steps"] == metrics["steps"] == bb.SMOKE["steps"]
    # From g = 5, e = 0.5: roughly the truth, with 24 noisy heights.
    assert abs(saved["g"] - 9.81) < 0.3 and abs(saved["e"] - 0.8) < 0.02
    assert saved["final_mse"] < 2 * saved["noise_var"]
    assert saved["nfe_fwd_per_step"] > 0 and saved["nfe_bwd_per_step"] > 0
    assert len(saved["impacts_learned"]) == len(saved["impacts_true"]) == 2


@pytest.mark.parametrize("adjoint", ADJOINTS_CONTINUOUS_SLOW)
def test_bounce_times_and_gradients_match_closed_forms(adjoint):
    # Dropped from rest: t1 = sqrt(2 h0 / g); the ball leaves at e g t1 and lands 2 e t1 later.
    g, e = 9.81, 0.8
    y0 = jnp.array([H0, 0.0])
    t_obs = jnp.linspace(0.05, 4.0, 9)

    def impacts(p):
        ball = _ball(p[0], p[1])
        kw = _solve_kwargs(adjoint)
        return bb.simulate(ball, y0, t_obs, bounces=2, horizon=6.0, solve_kwargs=kw)[1]

    p = jnp.array([g, e])
    t1 = np.sqrt(2 * H0 / g)
    np.testing.assert_allclose(impacts(p), [t1, t1 * (1 + 2 * e)], rtol=1e-10)
    jac = jax.jit(jax.jacrev(impacts))(p)  # rows: t1, t2; columns: g, e
    dt1_dg = -t1 / (2 * g)
    np.testing.assert_allclose(jac[0, 0], dt1_dg, rtol=1e-8)
    np.testing.assert_allclose(jac[0, 1], 0.0, atol=1e-12)
    np.testing.assert_allclose(jac[1, 0], (1 + 2 * e) * dt1_dg, rtol=1e-8)
    np.testing.assert_allclose(jac[1, 1], 2 * t1, rtol=1e-8)


@pytest.mark.parametrize("adjoint", ADJOINTS_CONTINUOUS_SLOW)
def test_height_loss_gradient_with_drag_mlp_matches_finite_differences(adjoint):
    cfg = BouncingBallConfig(drag="mlp", mlp_width=4)
    ball = bb.init_ball(cfg, jax.random.key(1), dtype=jnp.float64)
    w = ball.drag.layers[-1].weight  # non-zero, so the MLP's own weights get gradients too
    ball = eqx.tree_at(lambda b: b.drag.layers[-1].weight, ball, 0.3 * jnp.ones_like(w))
    y0 = jnp.array([H0, 0.0])
    t_obs = jnp.linspace(0.1, 5.0, 15)
    target = jnp.sin(t_obs) + 2.0
    params, static = eqx.partition(ball, eqx.is_inexact_array)
    flat, unflatten = jax.flatten_util.ravel_pytree(params)

    def loss(flat):
        b = eqx.combine(unflatten(flat), static)
        h, _, _ = bb.simulate(
            b, y0, t_obs, bounces=3, horizon=6.0, solve_kwargs=_solve_kwargs(adjoint)
        )
        return jnp.mean((h - target) ** 2)

    grad = jax.jit(jax.grad(loss))(flat)
    # Every parameter (log g, logit e, the MLP's weights; the last bias cancels in m(v) - m(0)).
    # eps: central differences of an adaptive solve are noisy below ~1e-5; where the gradient
    # is exactly 0 (the last bias) they read up to 1.2e-7 (the solves' steps differ).
    loss_jit, eps, basis = jax.jit(loss), 1e-4, np.eye(flat.shape[0])
    fd = [(loss_jit(flat + eps * d) - loss_jit(flat - eps * d)) / (2 * eps) for d in basis]
    np.testing.assert_allclose(grad, fd, rtol=1e-5, atol=1e-6)
    assert float(grad[-1]) == 0.0
