"""The regularisers of issue 21 against direct computations on small problems."""

import json

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.integrate
import scipy.linalg

import ode_jax
from ode_jax.nn import CNF, ODEBlock, PlanarCNFField

A = np.array([[-0.5, 1.0], [-1.0, -0.3]])
Y0 = np.array([1.0, 0.5])
TS = np.array([0.0, 1.0])
TIGHT = dict(solver="dopri5", rtol=1e-10, atol=1e-12)


def linear(t, y, a):
    return a @ y


def _quad(fn, t0=0.0, t1=1.0):
    return scipy.integrate.quad(fn, t0, t1, epsabs=1e-13, epsrel=1e-12)[0]


def _solve(penalty, a=A, key=None, **kw):
    reg = ode_jax.Regulariser((penalty,), **kw.pop("reg", {}))
    options = {**TIGHT, **kw}
    return ode_jax.regularised_odeint(
        linear, jnp.asarray(Y0), TS, jnp.asarray(a), regulariser=reg, key=key, **options
    )


def test_kinetic_linear_closed_form():
    # y(t) = e^{At} y0, f = A y(t): ∫ ||A e^{At} y0||² dt.
    exact = _quad(lambda t: np.sum((A @ scipy.linalg.expm(A * t) @ Y0) ** 2))
    sol, pen = _solve("kinetic")
    np.testing.assert_allclose(pen["kinetic"], exact, rtol=1e-8)
    np.testing.assert_allclose(sol.ys[-1], scipy.linalg.expm(A) @ Y0, rtol=1e-8)


@pytest.mark.parametrize("penalty", ["kinetic", "jacobian", "taynode"])
def test_penalties_of_a_solve_backwards_in_time_are_integrals_over_abs_dt(penalty):
    # From y(1) back to y(0): the same path, so the same ∫ ... |dt| (not its negative).
    y1 = scipy.linalg.expm(A) @ Y0
    reg = ode_jax.Regulariser((penalty,), trace="exact")
    fwd = _solve(penalty, reg=dict(trace="exact"))[1][penalty]
    sol, back = ode_jax.regularised_odeint(
        linear, jnp.asarray(y1), TS[::-1].copy(), jnp.asarray(A), regulariser=reg, **TIGHT
    )
    np.testing.assert_allclose(sol.ys[-1], Y0, rtol=1e-8)
    assert fwd > 0
    np.testing.assert_allclose(back[penalty], fwd, rtol=1e-7)


def test_jacobian_exact_trace_and_hutchinson_mean():
    # ∂f/∂y = A everywhere: the integral is T ||A||_F², exactly with the exact trace ...
    _, pen = _solve("jacobian", reg=dict(trace="exact"))
    np.testing.assert_allclose(pen["jacobian"], np.sum(A**2), rtol=1e-10)
    # ... and in expectation over probes with Hutchinson's (each probe: T ||A ε||²).
    for noise in ("rademacher", "gaussian"):
        keys = jax.random.split(jax.random.key(0), 1000)
        vals = jax.vmap(
            lambda k, n=noise: _solve("jacobian", key=k, reg=dict(noise=n))[1]["jacobian"]
        )(keys)
        se = np.std(vals) / np.sqrt(len(vals))
        assert abs(np.mean(vals) - np.sum(A**2)) < 4 * se
        one = ode_jax.hutchinson_probe(keys[0], jnp.asarray(Y0), noise)
        np.testing.assert_allclose(vals[0], np.sum((A @ np.asarray(one)) ** 2), rtol=1e-10)


@pytest.mark.parametrize("order", [1, 2, 3])
def test_taynode_exponential(order):
    # y' = y: every derivative is y = y0 e^t, so ∫ ||d^K y/dt^K||² = ||y0||² (e² - 1) / 2.
    reg = ode_jax.Regulariser(("taynode",), order=order)
    _, pen = ode_jax.regularised_odeint(
        lambda t, y, a: y, jnp.asarray(Y0), TS, regulariser=reg, **TIGHT
    )
    np.testing.assert_allclose(pen["taynode"], np.sum(Y0**2) * (np.e**2 - 1) / 2, rtol=1e-8)


def test_taylor_derivatives_time_dependent():
    # y' = t y: y'' = (1 + t²) y, y''' = (3t + t³) y (the jet path for K = 3).
    t, y = jnp.asarray(0.7), jnp.asarray([1.3, -0.4])
    d = ode_jax.taylor_derivatives(lambda t_, y_: t_ * y_, t, y, 3)
    np.testing.assert_allclose(d[0], 0.7 * y, rtol=1e-12)
    np.testing.assert_allclose(d[1], (1 + 0.49) * y, rtol=1e-12)
    np.testing.assert_allclose(d[2], (3 * 0.7 + 0.7**3) * y, rtol=1e-12)


def test_taynode_linear_closed_form():
    # d²y/dt² = A² e^{At} y0.
    exact = _quad(lambda t: np.sum((A @ A @ scipy.linalg.expm(A * t) @ Y0) ** 2))
    _, pen = _solve("taynode", reg=dict(order=2))
    np.testing.assert_allclose(pen["taynode"], exact, rtol=1e-8)


def test_error_estimate_is_the_sum_of_the_solvers_step_errors():
    opts = dict(solver="dopri5", rtol=1e-5, atol=1e-7, adjoint="discrete")
    sol, pen = _solve("error", **opts)
    plain = ode_jax.odeint(linear, jnp.asarray(Y0), TS, jnp.asarray(A), save_steps=True, **opts)
    assert int(sol.stats["num_steps"]) == int(plain.stats["num_steps"])  # same steps
    n = int(plain.stats["num_accepted"])
    ends = np.asarray(plain.step_ts[:n])
    starts = np.concatenate([[0.0], ends[:-1]])
    ys = np.concatenate([Y0[None], np.asarray(plain.step_ys[: n - 1])])
    method = ode_jax.SOLVERS["dopri5"]
    f = lambda t, y, a: a @ y  # noqa: E731
    total = 0.0
    for t, dt, y in zip(starts, ends - starts, ys):
        state, _ = method.init(f, t, jnp.asarray(y), jnp.asarray(A))
        _, err, _, _, _ = method.step(f, t, jnp.asarray(y), dt, jnp.asarray(A), state)
        total += float(ode_jax.rms_norm(err))
    np.testing.assert_allclose(pen["error"], total, rtol=1e-10)
    assert pen["error"] > 0


def _fd(fn, a, eps=1e-6):
    out = np.zeros_like(a)
    for i in np.ndindex(a.shape):
        e = np.zeros_like(a)
        e[i] = eps
        out[i] = (fn(a + e) - fn(a - e)) / (2 * eps)
    return out


@pytest.mark.slow
@pytest.mark.parametrize(
    "penalty, adjoint",
    [
        ("kinetic", "continuous"),
        ("kinetic", "discrete"),
        ("jacobian", "continuous"),
        ("taynode", "continuous"),
        ("taynode", "discrete"),
    ],
)
def test_penalty_gradients_match_finite_differences(penalty, adjoint):
    key = jax.random.key(3)

    @jax.jit
    def value(a):
        return _solve(penalty, a=a, key=key, adjoint=adjoint, rtol=1e-10, atol=1e-12)[1][penalty]

    grad = jax.jit(jax.grad(value))(jnp.asarray(A))
    fd = _fd(lambda a: float(value(jnp.asarray(a))), A.copy())
    np.testing.assert_allclose(grad, fd, rtol=1e-5, atol=1e-9)


@pytest.mark.slow
def test_error_penalty_gradient_holds_the_steps_fixed():
    # The discrete adjoint differentiates each step with its dt fixed (as Pal et al.): the
    # gradient of Σ_j ||ê_j(a)|| over the recorded step sizes, here by plain autodiff.
    opts = dict(solver="dopri5", rtol=1e-5, atol=1e-7, adjoint="discrete")

    @jax.jit
    def value(a):
        return _solve("error", a=a, **opts)[1]["error"]

    grad = jax.jit(jax.grad(value))(jnp.asarray(A))
    plain = ode_jax.odeint(linear, jnp.asarray(Y0), TS, jnp.asarray(A), save_steps=True, **opts)
    n = int(plain.stats["num_accepted"])
    ends = np.asarray(plain.step_ts[:n])
    dts = ends - np.concatenate([[0.0], ends[:-1]])
    method = ode_jax.SOLVERS["dopri5"]

    def manual(a):
        y, t, total = jnp.asarray(Y0), 0.0, 0.0
        for dt in dts:
            state, _ = method.init(linear, t, y, a)
            y, err, _, _, _ = method.step(linear, t, y, dt, a, state)
            t, total = t + dt, total + ode_jax.rms_norm(err)
        return total

    np.testing.assert_allclose(value(jnp.asarray(A)), manual(jnp.asarray(A)), rtol=1e-10)
    np.testing.assert_allclose(grad, jax.grad(manual)(jnp.asarray(A)), rtol=1e-8, atol=1e-14)


def test_error_penalty_needs_the_discrete_adjoint():
    with pytest.raises(ValueError, match="adjoint='discrete'"):
        _solve("error")
    with pytest.raises(ValueError, match="adjoint='discrete'"):
        _solve("error", adjoint=ode_jax.ContinuousAdjoint())
    # Directly through odeint: the continuous adjoint refuses when differentiated.
    solver = ode_jax.accumulate_error("dopri5")
    y0 = (jnp.asarray(Y0), {"error": jnp.zeros(())})

    def direct(a):
        field = lambda t, s, a_: (a_ @ s[0], {"error": jnp.zeros(())})  # noqa: E731
        return ode_jax.odeint(field, y0, TS, a, solver=solver).ys[1]["error"][-1]

    with pytest.raises(ValueError, match="adjoint='discrete'"):
        jax.grad(direct)(jnp.asarray(A))
    with pytest.raises(ValueError, match="fixed steps"):
        ode_jax.accumulate_error("rk4")


def test_bad_regulariser_arguments():
    with pytest.raises(ValueError, match="unknown penalties"):
        ode_jax.Regulariser(("speed",))
    with pytest.raises(ValueError, match="order"):
        ode_jax.Regulariser(("taynode",), order=0)
    with pytest.raises(ValueError, match="steer"):
        ode_jax.Regulariser(steer=-1.0)
    with pytest.raises(ValueError, match="PRNG key"):
        _solve("jacobian")
    with pytest.raises(ValueError, match="STEER"):
        ode_jax.steer_end_time(jax.random.key(0), 0.0, 1.0, 1.0)


def test_steer_end_time_is_uniform():
    keys = jax.random.split(jax.random.key(1), 20000)
    t = np.asarray(jax.vmap(lambda k: ode_jax.steer_end_time(k, 0.0, 1.0, 0.4))(keys))
    assert t.min() >= 0.6 and t.max() <= 1.4
    hist, _ = np.histogram(t, bins=8, range=(0.6, 1.4))
    np.testing.assert_allclose(hist / len(t), 1 / 8, atol=0.01)
    np.testing.assert_allclose(t.mean(), 1.0, atol=0.01)


def _decay(t, y):
    return -y


def test_odeblock_steer_and_penalties():
    y0 = jnp.asarray([1.0, 2.0])
    key = jax.random.key(5)
    settings = ode_jax.SolveSettings(solver="dopri5", rtol=1e-10, atol=1e-12)
    block = ODEBlock(_decay, 1.0, settings=settings, regulariser=ode_jax.Regulariser(steer=0.3))
    y1, stats = block.solve(y0, regularise=True, key=key)
    t_end = ode_jax.steer_end_time(jax.random.split(key)[1], 0.0, 1.0, 0.3, y0.dtype)
    np.testing.assert_allclose(y1, y0 * jnp.exp(-t_end), rtol=1e-8)
    assert stats["penalties"] == {}
    np.testing.assert_allclose(block(y0), y0 * np.exp(-1.0), rtol=1e-8)  # plain: no STEER

    reg = ode_jax.Regulariser(("kinetic",))
    block = ODEBlock(_decay, 1.0, settings=settings, regulariser=reg)
    y1, stats = block.solve(y0, regularise=True)
    # ∫ ||y0 e^{-t}||² = ||y0||² (1 - e^{-2}) / 2; the steps are the plain solve's.
    np.testing.assert_allclose(stats["penalties"]["kinetic"], 5 * (1 - np.exp(-2)) / 2, rtol=1e-8)
    _, plain = block.solve(y0)
    assert int(stats["num_steps"]) == int(plain["num_steps"])
    with pytest.raises(ValueError, match="STEER"):
        ODEBlock(_decay, 1.0, regulariser=ode_jax.Regulariser(steer=1.0))


@pytest.mark.slow
def test_cnf_regularised_penalties_and_density():
    field = PlanarCNFField(2, 4, hyper_width=8, key=jax.random.key(0))
    settings = ode_jax.SolveSettings(solver="dopri5", rtol=1e-9, atol=1e-9)
    x = jax.random.normal(jax.random.key(1), (5, 2))
    plain = CNF(field, settings=settings)
    for reg in (
        ode_jax.Regulariser(("kinetic",)),
        ode_jax.Regulariser(("jacobian",), trace="exact"),
    ):
        cnf = CNF(field, settings=settings, regulariser=reg)
        logp, stats = cnf.log_prob(x, regularise=True, key=jax.random.key(2))
        np.testing.assert_allclose(logp, plain.log_prob(x)[0], rtol=1e-6)
        # The same penalty of the flow alone (the divergence is not penalised).
        _, direct = ode_jax.regularised_odeint(
            lambda t, z, a: field(t, z), x, np.array([0.0, 1.0]), regulariser=reg,
            solver="dopri5", rtol=1e-9, atol=1e-9,
        )  # fmt: skip
        name = reg.penalties[0]
        np.testing.assert_allclose(stats["penalties"][name], direct[name], rtol=1e-6)
        # Sampling runs from t1 back to t0; its penalty is >= 0 too (was negative: issue 21).
        _, _, back = cnf.sample_with_log_prob(x, regularise=True, key=jax.random.key(3))
        assert float(back["penalties"][name]) > 0


def test_penalties_under_jit_and_in_float32():
    reg = ode_jax.Regulariser(("kinetic", "jacobian", "taynode"))

    @eqx.filter_jit
    def run(a, key):
        y0 = jnp.asarray(Y0, jnp.float32)
        return ode_jax.regularised_odeint(
            linear, y0, TS.astype(np.float32), a, regulariser=reg, key=key, rtol=1e-5, atol=1e-6
        )[1]

    pen = run(jnp.asarray(A, jnp.float32), jax.random.key(0))
    assert set(pen) == {"kinetic", "jacobian", "taynode"}
    assert all(v.dtype == jnp.float32 and np.isfinite(v) for v in pen.values())


def test_config_flags():
    from configs.cnf import CNFConfig
    from configs.odenet import ODENetConfig
    from configs.spiral import SpiralConfig

    with pytest.raises(ValueError, match="rknet"):
        ODENetConfig(reg="error")
    with pytest.raises(ValueError, match="discrete"):
        SpiralConfig(reg="error")
    with pytest.raises(ValueError, match="CNF model"):
        CNFConfig(reg="kinetic", model="nf")
    cfg = SpiralConfig(reg="steer", steer=0.5)
    assert cfg.regulariser(0.2).steer == pytest.approx(0.1)
    assert SpiralConfig().regulariser() is None
    rnode = CNFConfig(reg="rnode", reg_weight=0.5)
    assert rnode.regulariser().penalties == ("kinetic", "jacobian")
    pens = {"kinetic": jnp.asarray(4.0), "jacobian": jnp.asarray(12.0)}
    assert rnode.penalty(pens, 8) == pytest.approx(1.0)  # 0.5 * (4 + 12) / 8
    cfg = CNFConfig(reg="taynode", reg_weight=0.5, reg_order=3)
    assert cfg.regulariser().order == 3
    assert cfg.penalty({"taynode": jnp.asarray(4.0)}, 8) == pytest.approx(0.25)
    assert ODENetConfig(reg="error", model="rknet", reg_weight=2.0).penalty(
        {"error": 3.0}, 100
    ) == pytest.approx(6.0)


@pytest.mark.slow
def test_study_runner_smoke_and_table(tmp_path):
    from experiments import regularisation

    regularisation.main(["run", "--root", str(tmp_path / "runs"), "--tasks", "spiral", "--smoke"])
    regularisation.main(["table", "--root", str(tmp_path / "runs"), "--out", str(tmp_path / "o")])
    rows = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert len(rows) == len(regularisation.ARMS["spiral"])
    keys = {"task", "reg", "weight", "seed", "metric_name", "metric", "nfe_fwd_test"}
    keys |= {"nfe_fwd_train", "nfe_bwd_train", "train_seconds"}
    assert all(keys <= set(r) for r in rows)
    assert (tmp_path / "o" / "metric_vs_nfe.png").exists()


def test_study_runner_user_errors(tmp_path):
    from experiments import regularisation
    from experiments.common.cli import UserError

    with pytest.raises(
        UserError, match="--tasks: unknown ode; choose from odenet,odenet_3ep,cnf,spiral"
    ):
        regularisation.main(["run", "--root", str(tmp_path), "--tasks", "ode"])
    with pytest.raises(UserError, match="--runs: unknown kinetic_7"):
        regularisation.main(["run", "--tasks", "spiral", "--runs", "kinetic_7"])
    with pytest.raises(UserError, match="no folder"):
        regularisation.main(["table", "--root", str(tmp_path / "none")])
    with pytest.raises(UserError, match="no finished runs"):
        regularisation.main(["table", "--root", str(tmp_path), "--out", str(tmp_path / "o")])
