"""Case (d) of the benchmarks: one ODE-Net training step (benchmarks/train_step.py)."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import train_step as ts
from benchmarks.methods import torch_available

needs_torch = pytest.mark.skipif(not torch_available(), reason="torch/torchdiffeq not installed")


def _flat(arrays):
    return np.concatenate([np.ravel(a) for a in arrays])


def _rel(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def _quick(**overrides):
    setup = ts.Setup.make(quick=True, **overrides)
    model = ts.make_jax_model(setup)
    params, static = eqx.partition(model, eqx.is_inexact_array)
    x, y = ts.make_data(setup)
    return setup, model, params, static, x, y


def _jax_loss_grads(static, solve, params, x, y):
    loss, grads = jax.jit(jax.value_and_grad(ts.loss_fn(static, solve)))(params, x, y)
    return float(loss), _flat(ts.jax_grads_torch_order(grads))


def test_data_and_params_are_float32():
    setup, _, params, _, x, y = _quick()
    assert x.dtype == jnp.float32 and x.shape == (8, 28, 28, 1) and y.dtype == jnp.int32
    assert {leaf.dtype for leaf in jax.tree.leaves(params)} == {jnp.dtype(jnp.float32)}
    assert setup.batch == 8 and setup.width == 16


@needs_torch
def test_torch_model_matches_jax_loss_and_gradient():
    """Same weights, same (Euler) discretisation: loss and gradient agree to float32 round-off."""
    _, model, params, static, x, y = _quick()
    net = ts.make_torch_model(model, ts.Setup.make(quick=True))
    x_t, y_t = ts.torch_data(x, y)
    assert ts.check_torch_forward(net, params, static, x, x_t) < 1e-5
    loss, grads = _jax_loss_grads(static, ts.euler_solver(0.1), params, x, y)
    net.block.fixed_step = 0.1
    loss_t, grads_t = ts.torch_loss_and_grads(net, False, x_t, y_t)
    assert abs(loss - loss_t) < 1e-5
    assert _rel(grads, _flat(grads_t)) < 1e-4


def test_report_rows_and_targets():
    runners = [
        ts.StepRunner(name, step=lambda: None, times=[t])
        for name, t in [
            ("ode_jax-continuous", 0.5),
            ("ode_jax-discrete", 0.3),
            ("diffrax-rca", 0.4),
            ("torchdiffeq", 0.6),
        ]
    ]
    rows = ts.summarise(runners)
    text = ts.table(rows)
    assert [line.split(" | ")[0].strip("| ") for line in text.splitlines()[2:]] == [
        r.name for r in runners
    ]
    assert ts.target_lines(rows) == [
        "- (d) ode_jax-continuous: step / fastest other = 1.25 (target <= 1.0) MISSED",
        "- (d) ode_jax-discrete: step / fastest other = 0.75 (target <= 1.0) ok",
    ]


@pytest.mark.slow
@needs_torch
def test_every_method_gives_the_same_loss_and_gradient():
    """All four JAX solves and both torchdiffeq modes, tolerance 1e-5: the same loss, and
    gradients as close as torchdiffeq's two modes are to each other. (At this size the gradient
    is sensitive to the solve: torchdiffeq's odeint and odeint_adjoint differ by 5.5% in norm,
    diffrax's RecursiveCheckpointAdjoint by 5.8% from odeint; the Euler test above checks the
    model itself to float32 round-off.)"""
    setup, model, params, static, x, y = _quick(rtol=1e-5, atol=1e-5)
    net = ts.make_torch_model(model, setup)
    x_t, y_t = ts.torch_data(x, y)
    ref_loss, ref = ts.torch_loss_and_grads(net, False, x_t, y_t)
    ref = _flat(ref)
    for name in ts.JAX_STEP_METHODS:
        loss, grads = _jax_loss_grads(static, ts.ode_solver(name, setup), params, x, y)
        assert abs(loss - ref_loss) < 1e-4, name
        assert _rel(grads, ref) < 0.1, name
    loss, grads = ts.torch_loss_and_grads(net, True, x_t, y_t)
    assert abs(loss - ref_loss) < 1e-6 and _rel(_flat(grads), ref) < 0.1


@pytest.mark.slow
@needs_torch
def test_quick_section_has_every_method():
    text, lines, rows = ts.run_section(quick=True, repeats=1, budget_s=0.0, log=lambda m: None)
    assert [r["method"] for r in rows] == [*ts.JAX_STEP_METHODS, *ts.TORCH_STEP_METHODS]
    for name in ts.JAX_STEP_METHODS + ts.TORCH_STEP_METHODS:
        assert f"| {name} |" in text
    assert len(lines) == 2 and all(line.startswith("- (d) ode_jax-") for line in lines)
    losses = [r["loss"] for r in rows]
    assert max(losses) - min(losses) < 1e-3  # the same first step everywhere
    assert all(r["nfe_fwd"] > 0 for r in rows)
