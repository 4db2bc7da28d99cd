"""CNFs, planar flows and the 2-D toy densities: divergences, log-densities, inverses, --smoke."""

import json

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.scipy.linalg
import numpy as np
import pytest

import ode_jax
from configs.cnf import CNFConfig
from experiments import cnf as cnf_experiment
from experiments.common.cli import UserError
from ode_jax import data, nn

KEY = jax.random.key(0)
TIGHT = ode_jax.SolveSettings(solver="dopri5", rtol=1e-9, atol=1e-9)


class LinearField(eqx.Module):
    """``dz/dt = A z``: the flow map is ``expm(A t)`` and the divergence ``tr A``."""

    a: jax.Array

    def __call__(self, t, z, args=None):
        return z @ self.a.T


A = jnp.array([[-0.3, 0.8], [-0.5, 0.4]])  # not symmetric, tr A = 0.1


def _trace_jacfwd(fn, z):
    return jax.vmap(lambda zi: jnp.trace(jax.jacfwd(fn)(zi)))(z)


def test_planar_cnf_trace_is_the_jacobian_trace():
    field = nn.PlanarCNFField(2, 5, hyper_width=8, key=KEY)
    z = 2 * jax.random.normal(jax.random.key(1), (7, 2))
    for t in (0.0, 0.6):
        f, div = field.flow_and_divergence(t, z)
        np.testing.assert_allclose(f, field(t, z), rtol=1e-12)
        expected = _trace_jacfwd(lambda zi, t=t: field(t, zi), z)
        np.testing.assert_allclose(div, expected, rtol=1e-10, atol=1e-12)
        assert np.ptp(np.asarray(div)) > 1e-3  # depends on z: not a trivially constant trace


def test_exact_divergence_matches_jacfwd():
    dim = 3  # the JVP loop is dimension-agnostic; 2-D is what the experiment uses
    field = nn.MLPField(dim, 16, 2, time="concatsquash", key=KEY)
    z = jax.random.normal(jax.random.key(2), (9, dim))
    f, div = nn.divergence_exact(lambda y: field(0.3, y), z)
    np.testing.assert_allclose(f, field(0.3, z), rtol=1e-12)
    np.testing.assert_allclose(div, _trace_jacfwd(lambda y: field(0.3, y), z), rtol=1e-10)


@pytest.mark.parametrize("noise", ["gaussian", "rademacher"])
def test_hutchinson_is_unbiased(noise):
    field = nn.MLPField(3, 16, 2, time="concatsquash", key=KEY)
    z = jax.random.normal(jax.random.key(3), (3,))
    n = 20000
    zz = jnp.broadcast_to(z, (n, 3))
    eps = nn.sample_noise(jax.random.key(4), zz.shape, noise, zz.dtype)
    np.testing.assert_allclose(
        jnp.mean(eps[:, :, None] * eps[:, None, :], 0), jnp.eye(3), atol=0.05
    )
    _, est = nn.divergence_hutchinson(lambda y: field(0.5, y), zz, eps)
    exact = jnp.trace(jax.jacfwd(lambda y: field(0.5, y))(z))
    se = jnp.std(est) / np.sqrt(n)
    assert jnp.std(est) > 1e-3  # one probe alone is noisy...
    assert abs(jnp.mean(est) - exact) < 4 * se  # ...but the mean converges to the trace
    if noise == "rademacher":  # εᵢ² = 1: the diagonal is exact, only off-diagonals add noise
        scale = jnp.array([[1.0, 2.0, 3.0]])
        _, est_diag = nn.divergence_hutchinson(lambda y: y * scale, zz, eps)
        np.testing.assert_allclose(est_diag, 6.0, rtol=1e-12)


@pytest.mark.parametrize("adjoint", ["continuous", "discrete"])
def test_linear_field_log_density_and_gradient(adjoint):
    """``log p(x) = log N(expm(A t1) x) + t1 tr A``, and its gradient in A, from both adjoints."""
    x = jax.random.normal(jax.random.key(5), (6, 2))

    def analytic(a):
        z = x @ jax.scipy.linalg.expm(1.5 * a).T
        return jnp.mean(nn.standard_normal_log_prob(z)) + 1.5 * jnp.trace(a)

    def solved(a):
        cnf = nn.CNF(LinearField(a), t1=1.5, settings=TIGHT.replace(adjoint=adjoint))
        logp, stats = cnf.log_prob(x)
        return jnp.mean(logp), stats["nfe"]

    (value, nfe), grad = jax.value_and_grad(solved, has_aux=True)(A)
    np.testing.assert_allclose(value, analytic(A), rtol=1e-7)
    np.testing.assert_allclose(grad, jax.grad(analytic)(A), rtol=1e-6)
    assert nfe > 0


def test_hutchinson_log_density_is_unbiased():
    cnf = nn.CNF(LinearField(A), divergence="hutchinson", noise="rademacher", settings=TIGHT)
    x = jnp.broadcast_to(jnp.array([0.3, -0.7]), (4000, 2))
    logp, _ = cnf.log_prob(x, key=jax.random.key(6))
    exact = nn.standard_normal_log_prob(x[0] @ jax.scipy.linalg.expm(A).T) + jnp.trace(A)
    assert jnp.std(logp) > 0.1  # off-diagonal entries of A make each estimate noisy
    assert abs(jnp.mean(logp) - exact) < 4 * jnp.std(logp) / np.sqrt(x.shape[0])
    with pytest.raises(ValueError, match="key"):
        cnf.log_prob(x)


def test_density_integrates_to_one():
    field = nn.MLPField(2, 16, 2, time="concatsquash", key=jax.random.key(7))
    cnf = nn.CNF(field, settings=ode_jax.SolveSettings(solver="dopri5", rtol=1e-7, atol=1e-5))
    g = jnp.linspace(-7, 7, 141)
    pts = jnp.stack(jnp.meshgrid(g, g), -1).reshape(-1, 2)
    logp, _ = cnf.log_prob(pts)
    mass = jnp.sum(jnp.exp(logp)) * (g[1] - g[0]) ** 2
    assert abs(mass - 1) < 2e-3
    base = nn.standard_normal_log_prob(pts)
    assert jnp.max(jnp.abs(logp - base)) > 1e-2  # the flow changed the density


def test_sampling_inverts_the_forward_map():
    cnf = nn.CNF(nn.PlanarCNFField(2, 8, key=KEY), t1=2.0, settings=TIGHT)
    z = jax.random.normal(jax.random.key(8), (10, 2))
    x, logq, _ = cnf.sample_with_log_prob(z)
    assert jnp.max(jnp.abs(x - z)) > 1e-2
    z_again, logp, _ = cnf.to_base(x)
    np.testing.assert_allclose(z_again, z, atol=1e-7)
    np.testing.assert_allclose(logp, logq, atol=1e-7)


@pytest.mark.slow  # ~18 s
def test_settings_and_per_call_overrides():
    field = nn.PlanarCNFField(2, 8, key=KEY)
    loose = nn.CNF(field, settings=ode_jax.SolveSettings(solver="dopri5", rtol=1e-3, atol=1e-3))
    x = jax.random.normal(jax.random.key(9), (5, 2))
    tight_logp, tight_stats = nn.CNF(field, settings=TIGHT).log_prob(x)
    logp, stats = loose.log_prob(x, rtol=1e-9, atol=1e-9)  # this call only
    np.testing.assert_allclose(logp, tight_logp, rtol=1e-12)
    assert int(stats["nfe"]) == int(tight_stats["nfe"]) > int(loose.log_prob(x)[1]["nfe"])
    with pytest.raises(TypeError, match="unknown solve setting"):
        loose.log_prob(x, rtl=1e-3)
    with pytest.raises(TypeError, match="SolveSettings"):
        nn.CNF(field, settings=dict(rtol=1e-3))
    with pytest.raises(TypeError, match="rtol"):
        nn.CNF(field, rtol=1e-3)  # the former keywords live in the settings
    flow = cnf_experiment.init_flow(CNFConfig(rtol=1e-4, adjoint="discrete"), KEY)
    assert flow.settings == CNFConfig(rtol=1e-4, adjoint="discrete").solve_settings()


@pytest.mark.parametrize("dim", [2, 3])
def test_planar_flow_logdet_is_slogdet_of_the_jacobian(dim):
    flow = nn.PlanarFlow(dim, 4, init_scale=1.0, key=KEY)
    u = jax.random.normal(jax.random.key(13), flow.u.shape)  # not volume-preserving any more
    flow = eqx.tree_at(lambda f: f.u, flow, u)
    z = jax.random.normal(jax.random.key(10), (6, dim))
    _, logdet = flow.forward(z)
    jac = jax.vmap(jax.jacfwd(lambda zi: flow.forward(zi)[0]))(z)
    sign, expected = jnp.linalg.slogdet(jac)
    assert jnp.all(sign > 0)  # orientation preserving: the constraint on u works
    np.testing.assert_allclose(logdet, expected, rtol=1e-10)
    assert jnp.max(jnp.abs(logdet)) > 1e-2


def test_planar_flow_u_constraint_and_inverse():
    w = jnp.array([[1.0, 2.0], [0.5, -1.0]])
    flow = eqx.tree_at(lambda f: (f.w, f.u), nn.PlanarFlow(2, 2, key=KEY), (w, -10 * w))
    assert jnp.all(jnp.sum(flow.w * flow.u, -1) < -1)  # the raw u would not be invertible
    assert jnp.all(jnp.sum(flow.w * flow.u_hat(), -1) > -1)
    fresh = nn.PlanarFlow(2, 8, key=KEY)  # starts volume-preserving: wᵀû = 0
    np.testing.assert_allclose(jnp.sum(fresh.w * fresh.u_hat(), -1), 0.0, atol=1e-12)
    z = 3 * jax.random.normal(jax.random.key(11), (20, 2))
    y, _ = flow.forward(z)
    np.testing.assert_allclose(flow.inverse(y), z, atol=1e-10)


@pytest.mark.parametrize("maps", ["base_to_data", "data_to_base"])
def test_planar_flow_log_prob_and_sampling_agree(maps):
    flow = nn.PlanarFlow(2, 6, maps=maps, init_scale=0.8, key=KEY)
    flow = eqx.tree_at(lambda f: f.u, flow, jax.random.normal(jax.random.key(14), (6, 2)))
    z = jax.random.normal(jax.random.key(12), (8, 2))
    x, logq = flow.sample_with_log_prob(z)
    np.testing.assert_allclose(flow.log_prob(x), logq, rtol=1e-9)
    assert jnp.max(jnp.abs(logq - nn.standard_normal_log_prob(z))) > 1e-2
    g = jnp.linspace(-8, 8, 121)
    pts = jnp.stack(jnp.meshgrid(g, g), -1).reshape(-1, 2)
    mass = jnp.sum(jnp.exp(flow.log_prob(pts))) * (g[1] - g[0]) ** 2
    assert abs(mass - 1) < 1e-2


def test_bad_inputs_name_the_argument():
    field = nn.PlanarCNFField(2, 2, key=KEY)
    with pytest.raises(ValueError, match="divergence"):
        nn.CNF(field, divergence="trace")
    with pytest.raises(ValueError, match="noise"):
        nn.CNF(field, noise="uniform")
    with pytest.raises(ValueError, match="t0 < t1"):
        nn.CNF(field, t0=1.0, t1=1.0)
    with pytest.raises(ValueError, match="maps"):
        nn.PlanarFlow(2, 2, maps="sideways", key=KEY)
    with pytest.raises(ValueError, match="name"):
        data.sample_toy("3moons", KEY, 10)
    with pytest.raises(ValueError, match="name"):
        data.toy_log_density("moons", jnp.zeros((1, 2)))
    with pytest.raises(ValueError, match=r"CNFConfig\.data"):
        CNFConfig(task="mle", data="U1")
    with pytest.raises(ValueError, match=r"CNFConfig\.width"):
        CNFConfig(width=0)


@pytest.mark.parametrize("name", data.TOY_DATASETS)
def test_toy_datasets(name):
    x = data.sample_toy(name, KEY, 1001)
    assert x.shape == (1001, 2) and x.dtype == jnp.float32 and jnp.all(jnp.isfinite(x))
    assert jnp.all(jnp.abs(x) < 6) and jnp.std(x) > 0.5
    assert not np.allclose(x, data.sample_toy(name, jax.random.key(1), 1001))


def test_known_densities_and_entropy():
    g = jnp.linspace(-6, 6, 361)
    pts = jnp.stack(jnp.meshgrid(g, g), -1)
    for name in data.KNOWN_DENSITY:
        mass = jnp.sum(jnp.exp(data.toy_log_density(name, pts))) * (g[1] - g[0]) ** 2
        assert abs(mass - 1) < 0.02, name
        x = data.sample_toy(name, KEY, 5000)
        assert jnp.all(jnp.isfinite(data.toy_log_density(name, x))), name
    h, _ = data.toy_entropy("checkerboard", KEY, 20000, 10000)
    np.testing.assert_allclose(h, np.log(32), rtol=1e-6)
    h, se = data.toy_entropy("8gaussians", KEY, 100000, 100000)
    # Well-separated components: about log 8 + the entropy of one Gaussian.
    one = 1 + np.log(2 * np.pi * (0.5 / 1.414) ** 2)
    assert abs(h - (np.log(8) + one)) < 4 * se + 0.01


@pytest.mark.parametrize("name", data.POTENTIALS)
def test_potentials(name):
    log_z = data.potential_log_normalizer(name)
    assert np.isfinite(log_z)
    # The wall keeps U2-U4 normalisable: a larger box adds (almost) nothing.
    assert abs(data.potential_log_normalizer(name, lim=8.0, n=801) - log_z) < 1e-3
    assert data.potential(name, jnp.zeros((3, 4, 2))).shape == (3, 4)


@pytest.mark.slow  # grid runner + table on smoke runs (~30 s); test_experiments runs --smoke
def test_smoke_grid_and_table(tmp_path):
    root, out = tmp_path / "runs", tmp_path / "results"
    argv = ["grid", "density", "--root", str(root), "--data", "U3", "--runs", "nf2"]
    done = cnf_experiment.main([*argv, "--smoke", "--no-progress"])
    assert len(done) == 1
    run = root / "density" / "U3" / "nf2"
    assert {"metrics.json", "density.npz", "density.png", "training_curve.png"} <= {
        p.name for p in run.iterdir()
    }
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["steps"] == 4 and metrics["final_eval"]["kl"] > 0
    assert abs(metrics["grid_mass"] - 1) < 0.2
    # Finished runs are skipped, and the table collects them.
    assert cnf_experiment.main([*argv, "--smoke", "--no-progress"]) == []
    table = cnf_experiment.main(["table", "--root", str(root), "--out", str(out)])
    assert "| NF (planar, K=2) | " in table and "| U3 |" in table
    assert {"metrics.json", "metrics.csv", "table.md", "density_matching.png"} <= {
        p.name for p in out.iterdir()
    }
    # The figures alone, from the same runs; user mistakes are one-line errors.
    assert cnf_experiment.main(["figures", "--root", str(root), "--out", str(out)]) == [
        "density_matching.png"
    ]
    with pytest.raises(UserError, match="--data: unknown U9; choose from U1"):
        cnf_experiment.main(["grid", "density", "--data", "U9"])
    with pytest.raises(UserError, match="--runs: unknown cnf9"):
        cnf_experiment.main(["grid", "mle", "--runs", "cnf9"])
    with pytest.raises(UserError, match="no folder"):
        cnf_experiment.main(["table", "--root", str(tmp_path / "none"), "--out", str(out)])
