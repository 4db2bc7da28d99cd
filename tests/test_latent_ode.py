"""Latent ODE pieces: spiral data and irregular sampling, ELBO terms, batched solves, --smoke."""

import dataclasses
import json

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.scipy.stats import norm

import ode_jax
from configs.latent_ode import LatentODEConfig
from experiments import latent_ode
from experiments.common.cli import config_to_dict
from ode_jax.data import make_spirals, observation_mask, sample_observation_indices
from ode_jax.nn import (
    LatentODE,
    ODERNNEncoder,
    RNNBaseline,
    gaussian_kl,
    gaussian_log_density,
    latent_ode_elbo,
    solve_on_union,
    solve_per_sequence,
)

TIGHT = dict(solver="dopri5", rtol=1e-10, atol=1e-10)


def test_spirals_shapes_directions_and_noise():
    s = make_spirals(3, 400, n_grid=20, n_extrap=7, start_max=50, dt=0.1, b=0.3, noise_std=0.1)
    assert s.ts.shape == (27,) and s.clean.shape == s.noisy.shape == (400, 27, 2)
    assert s.clean.dtype == s.noisy.dtype == s.ts.dtype == np.float32
    assert s.clockwise.sum() == 200 and s.n_grid == 20 and s.start.shape == (400,)
    np.testing.assert_allclose(np.diff(s.ts), 0.1, rtol=1e-5)
    # Archimedean at unit angular speed: the radius grows by b * dt per step.
    r = np.linalg.norm(s.clean, axis=-1)
    np.testing.assert_allclose(np.diff(r, axis=1), 0.03, atol=1e-5)
    # Counter-clockwise spirals turn left (positive cross product), clockwise ones right.
    v = np.diff(s.clean, axis=1)
    cross = s.clean[:, :-1, 0] * v[..., 1] - s.clean[:, :-1, 1] * v[..., 0]
    assert np.all(cross[~s.clockwise] > 0) and np.all(cross[s.clockwise] < 0)
    assert abs(np.std(s.noisy - s.clean) - 0.1) < 0.005
    again = make_spirals(3, 400, n_grid=20, n_extrap=7, start_max=50, dt=0.1, noise_std=0.1)
    np.testing.assert_array_equal(again.noisy, s.noisy)  # deterministic in the seed
    np.testing.assert_array_equal(s.take(slice(5)).start, s.start[:5])
    np.testing.assert_array_equal(s.take(s.clockwise).clockwise, True)
    with pytest.raises(ValueError, match="start_max"):
        make_spirals(0, 4, start_max=-1)


def test_sequences_are_stretches_of_two_long_trajectories():
    """Every sequence is the long spiral of its direction from grid index ``start`` on: the
    same curve for all, mirrored for clockwise, starts uniform over ``0 .. start_max``."""
    kw = dict(n_grid=10, n_extrap=5, dt=0.1, a=0.2, b=0.3, theta_min=1.0, noise_std=0.0)
    s = make_spirals(0, 600, start_max=40, **kw)
    assert s.start.min() == 0 and s.start.max() == 40 and s.start.dtype.kind == "i"
    assert len(np.unique(s.start)) == 41  # every start occurs
    k = np.arange(41 + 15)
    ccw = np.stack([(0.2 + 0.3 * (1 + 0.1 * k)) * f(1 + 0.1 * k) for f in (np.cos, np.sin)], -1)
    for i in range(0, 600, 37):
        path = ccw * ([1, -1] if s.clockwise[i] else [1, 1])
        np.testing.assert_allclose(s.clean[i], path[s.start[i] : s.start[i] + 15], atol=1e-5)
    np.testing.assert_array_equal(s.noisy, s.clean)  # noise_std=0


def test_test_targets_lie_in_the_region_training_windows_cover():
    """The experiment's split: every test extrapolation target is a grid point of the long
    trajectory that some training window shows (400 windows of 20 from 21 starts: all points)."""
    cfg = LatentODEConfig(**(latent_ode.SMOKE | dict(num_train=400, num_test=32)))
    (train, _), (test, _) = latent_ode.datasets(cfg)
    covered = {(bool(c), s + j) for c, s in zip(train.clockwise, train.start) for j in range(20)}
    assert covered == {(c, k) for c in (False, True) for k in range(cfg.n_total)}
    targets = {(bool(c), s + j) for c, s in zip(test.clockwise, test.start) for j in range(20, 30)}
    assert targets <= covered
    assert test.start.max() <= cfg.n_total - cfg.n_grid - cfg.n_extrap
    # Without test_covered, test sequences are drawn like training ones and can leave it.
    wide = dataclasses.replace(cfg, test_covered=False)
    (_, _), (test_wide, _) = latent_ode.datasets(wide)
    assert test_wide.start.max() > cfg.n_total - cfg.n_grid - cfg.n_extrap
    assert train.start.max() == cfg.n_total - cfg.n_grid


def test_irregular_sampling_without_replacement_and_masks():
    idx = sample_observation_indices(0, 50, 20, 7)
    assert idx.shape == (50, 7) and idx.dtype == np.int32
    assert np.all(np.diff(idx, axis=1) > 0)  # sorted, hence no repeats
    assert idx.min() >= 0 and idx.max() < 20
    assert len({tuple(r) for r in idx}) > 40  # rows are drawn independently
    mask = observation_mask(idx, 20)
    assert mask.shape == (50, 20) and np.all(mask.sum(1) == 7)
    assert np.all(np.take_along_axis(mask, idx, 1) == 1)
    np.testing.assert_array_equal(
        sample_observation_indices(1, 3, 5, 5), np.tile(np.arange(5), (3, 1))
    )
    with pytest.raises(ValueError, match="n_grid"):
        sample_observation_indices(0, 2, 5, 6)


def test_gaussian_kl_and_log_density_closed_form():
    rng = np.random.default_rng(0)
    mq, mp = rng.normal(size=(2, 3, 4))
    lq, lp = rng.normal(size=(2, 3, 4))
    sq, sp = np.exp(0.5 * lq), np.exp(0.5 * lp)
    expected = np.sum(np.log(sp / sq) + (sq**2 + (mq - mp) ** 2) / (2 * sp**2) - 0.5, axis=-1)
    np.testing.assert_allclose(gaussian_kl(mq, lq, mp, lp), expected, rtol=1e-12)
    np.testing.assert_allclose(gaussian_kl(mq, lq), gaussian_kl(mq, lq, 0 * mp, 0 * lp))
    np.testing.assert_allclose(gaussian_kl(mq, lq, mq, lq), 0.0, atol=1e-14)
    x = rng.normal(size=(3, 4))
    np.testing.assert_allclose(gaussian_log_density(x, mq, lq), norm.logpdf(x, mq, sq), rtol=1e-12)


def _call(t, y, field):
    return field(t, y)


def _field(key):
    return ode_jax.nn.MLPField(4, 8, 1, activation=jax.nn.elu, key=key)


def test_per_sequence_grids_match_one_by_one():
    field = _field(jax.random.key(0))
    z0 = jax.random.normal(jax.random.key(1), (3, 4))
    grid = np.linspace(0.0, 2.0, 11)
    idx = np.array([[0, 2, 3, 9], [0, 1, 5, 10], [0, 4, 6, 7]])
    ts = grid[idx]
    ones = [ode_jax.odeint(_call, z0[b], ts[b], field, **TIGHT).ys for b in range(3)]
    each, _ = solve_per_sequence(field, z0, jnp.asarray(ts), **TIGHT)
    union, _ = solve_on_union(field, z0, grid, **TIGHT)
    for b in range(3):
        np.testing.assert_allclose(each[b], ones[b], rtol=1e-6, atol=1e-8)
        np.testing.assert_allclose(union[idx[b], b], ones[b], rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("encoder", ["rnn", "odernn"])
def test_elbo_terms_match_a_per_sequence_computation(encoder):
    model = LatentODE(
        2, 4, rnn_hidden=5, field_width=6, decoder_width=6, encoder=encoder, key=jax.random.key(0)
    )
    grid = np.linspace(0.0, 1.5, 8)
    idx = np.array([[1, 3, 4], [0, 5, 7]])
    x = jax.random.normal(jax.random.key(1), (2, 3, 2))
    key, logvar = jax.random.key(2), np.log(0.3**2)
    log_lik, kl, _ = latent_ode_elbo(model, x, grid[idx], idx, grid, logvar, key, **TIGHT)
    mean, lv = model.encode(x, grid[idx], 0.0)
    assert mean.shape == lv.shape == (2, 4)
    z0 = mean + jnp.exp(0.5 * lv) * jax.random.normal(key, mean.shape)
    for b in range(2):
        ts = np.concatenate([[0.0], grid[idx[b]]]) if idx[b, 0] else grid[idx[b]]
        z = ode_jax.odeint(_call, z0[b], ts, model.field, **TIGHT).ys[-3:]
        expected = gaussian_log_density(x[b], model.decode(z), logvar).sum()
        np.testing.assert_allclose(log_lik[b], expected, rtol=1e-7)
        np.testing.assert_allclose(kl[b], gaussian_kl(mean[b], lv[b]), rtol=1e-12)


def test_latent_ode_and_odernn_hold_their_settings():
    settings = ode_jax.SolveSettings(solver="bosh3", rtol=1e-4, atol=1e-6)
    model = LatentODE(
        2, 4, rnn_hidden=5, field_width=6, decoder_width=6, settings=settings, key=jax.random.key(0)
    )
    z0 = jax.random.normal(jax.random.key(1), (3, 4))
    grid = np.linspace(0.0, 1.0, 5)
    z, stats = model.trajectory(z0, grid)
    ref, ref_stats = solve_on_union(model.field, z0, grid, settings)
    np.testing.assert_array_equal(z, ref)
    assert int(stats["nfe"]) == int(ref_stats["nfe"]) > 0
    tight, _ = model.trajectory(z0, grid, **TIGHT)  # overrides for this call
    np.testing.assert_allclose(tight, solve_on_union(model.field, z0, grid, **TIGHT)[0])
    assert not np.allclose(tight, z, rtol=1e-9, atol=0)
    encoder = ODERNNEncoder(
        2, 5, 4, settings=ode_jax.SolveSettings(solver="rk4", dt0=0.5), key=jax.random.key(2)
    )
    mean, logvar = encoder(jnp.ones((3, 2)), jnp.array([0.1, 0.4, 0.9]), 0.0)
    assert mean.shape == logvar.shape == (4,) and jnp.all(jnp.isfinite(mean))
    with pytest.raises(TypeError, match="SolveSettings"):
        LatentODE(settings=dict(rtol=1e-3), key=jax.random.key(0))


def test_rnn_baselines():
    x = jax.random.normal(jax.random.key(1), (5, 2))
    t = jnp.array([0.0, 0.1, 0.4, 0.5, 0.9])
    future = jnp.linspace(1.0, 2.0, 6)
    for gap in (False, True):
        rnn = RNNBaseline(2, 7, use_gap=gap, key=jax.random.key(0))
        assert rnn.extrapolate(x, t, future).shape == (6, 2)
        assert jnp.isfinite(rnn.log_likelihood(x, t))
        later = rnn.extrapolate(x, t, future + 1.0)
        assert bool(jnp.any(later != rnn.extrapolate(x, t, future))) == gap  # only it sees time
    grads = eqx.filter_grad(lambda m: m.log_likelihood(x, t))(rnn)
    assert jnp.all(jnp.isfinite(grads.log_std)) and jnp.any(grads.log_std != 0)


def test_latent_ode_smoke(tmp_path):
    out = tmp_path / "run"
    argv = ["--smoke", "--out", str(out), "--no-progress"]
    metrics = latent_ode.main(argv)
    files = {p.name for p in out.iterdir()}
    assert {"metrics.json", "data.png", "extrapolations.png", "latent_trajectories.png"} <= files
    final = json.loads((out / "metrics.json").read_text())["final_eval"]
    for name in latent_ode.MODELS:
        for kind in ("clean", "noisy"):
            for split in ("test", "train", "beyond"):
                assert np.isfinite(final[f"{split}_{name}_{kind}"])
    assert metrics["steps"] == latent_ode.SMOKE["steps"] and metrics["nfe_fwd_per_step"] > 0
    table = latent_ode.main(["table", str(out), "--out", str(tmp_path / "results")])
    assert "Latent ODE (paper)" in table and "n = 8" in table
    assert (tmp_path / "results" / "metrics.csv").exists()


def test_table_merges_runs_with_the_same_data(tmp_path):
    """Two runs at one n: the baselines from the first, the latent ODE from the second (which
    replaces the first's); runs with other data are refused, naming the field."""
    cfg = config_to_dict(LatentODEConfig(n_obs=30))

    def fake_run(name, final, **changes):
        d = tmp_path / name
        d.mkdir()
        (d / "config.json").write_text(json.dumps({**cfg, **changes}))
        (d / "metrics.json").write_text(json.dumps({"steps": 5, "final_eval": final}))
        for fig in ("data", "extrapolations", "latent_trajectories", "training_curve"):
            (d / f"{fig}.png").write_bytes(name.encode())
        return str(d)

    both = {"test_latent_ode_clean": 0.5, "test_rnn_clean": 0.3, "test_rnn_gap_clean": 0.2}
    first = fake_run("first", both)
    second = fake_run("second", {"test_latent_ode_clean": 0.1}, field_width=9, baselines=False)
    out = tmp_path / "results"
    table = latent_ode.main(["table", first, second, "--out", str(out)])
    row = json.loads((out / "metrics.json").read_text())[0]
    assert row["test_latent_ode_clean"] == 0.1 and row["test_rnn_clean"] == 0.3
    assert row["test_rnn_gap_clean"] == 0.2
    assert row["sources"] == {"latent_ode": second, "rnn": first, "rnn_gap": first}
    assert f"Latent ODE from `{second}`" in table and f"RNN from `{first}`" in table
    assert (out / "extrapolations_n30.png").read_bytes() == b"second"
    assert (out / "extrapolations_rnn_run_n30.png").read_bytes() == b"first"
    other = fake_run("other", {"test_latent_ode_clean": 0.1}, noise_std=0.3)
    with pytest.raises(ValueError, match="noise_std"):
        latent_ode.main(["table", first, other, "--out", str(out)])
    decayed = fake_run("decayed", {"test_latent_ode_clean": 0.1}, weight_decay=1e-4)
    with pytest.raises(ValueError, match="weight_decay"):
        latent_ode.main(["table", first, decayed, "--out", str(out)])


def test_scores_compare_the_points_after_the_window(monkeypatch):
    """Extrapolation RMSE: predictions at the n_extrap grid points after the window against
    the clean and the noisy path there (per coordinate), nothing from inside the window."""
    cfg = LatentODEConfig(**latent_ode.SMOKE)
    _, (test, idx) = latent_ode.datasets(cfg)
    n, clean = cfg.n_grid, test.clean
    window_wrong = clean.copy()
    window_wrong[:, :n] += 5.0  # only the window is off: no effect on the extrapolation score
    fake = {"latent_ode": window_wrong, "rnn": clean[:, n:], "rnn_gap": clean[:, n:] + 1.0}
    monkeypatch.setattr(latent_ode, "_predict_jit", lambda *args: fake)
    s = latent_ode.scores(None, cfg, test, idx, "t_")
    assert s["t_latent_ode_clean"] == s["t_rnn_clean"] == 0.0
    np.testing.assert_allclose(s["t_rnn_gap_clean"], 1.0, rtol=1e-6)
    noise = test.noisy[:, n:] - clean[:, n:]
    np.testing.assert_allclose(s["t_rnn_noisy"], np.sqrt(np.mean(noise**2)), rtol=1e-5)
    np.testing.assert_allclose(s["t_latent_ode_interp_clean"], 5.0, rtol=1e-6)
    fake["rnn"] = clean[:, n - 1 : -1]  # one grid step early: scored as wrong
    assert latent_ode.scores(None, cfg, test, idx, "t_")["t_rnn_clean"] > 0.01
