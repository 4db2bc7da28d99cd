"""Latent ODE experiment (Table 2): spiral splits, irregular sampling, ELBO terms, batched
solves, the RNN baselines, scoring, the validation-only training runs and the `table` command."""

import csv
import dataclasses
import json
import shutil

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.scipy.stats import norm

import ode_jax
from configs.latent_ode import SMOKE, LatentODEConfig
from experiments import latent_ode
from ode_jax.data import observation_mask, sample_observation_indices
from ode_jax.nn import (
    LatentODE,
    ODERNNEncoder,
    RNNBaseline,
    call_field,
    gaussian_kl,
    gaussian_log_density,
    latent_ode_elbo,
    solve_on_union,
    solve_per_sequence,
)

TIGHT = dict(solver="dopri5", rtol=1e-10, atol=1e-10)
CFG = LatentODEConfig(**(SMOKE | dict(num_train=400, num_val=60, num_test=50)))


def test_splits_are_disjoint_spirals_from_their_own_start_points():
    splits = {name: latent_ode.make_split(CFG, name) for name in ("train", "val", "test")}
    T = CFG.n_grid + CFG.n_extrap
    for name, s in splits.items():
        num = getattr(CFG, f"num_{name}")
        assert s.clean.shape == s.noisy.shape == (num, T, 2) and s.clean.dtype == np.float32
        assert s.clockwise.sum() == num // 2 and s.idx.shape == (num, CFG.n_obs)
        np.testing.assert_allclose(np.diff(s.ts), CFG.dt, rtol=1e-5)
        # Around its direction's centre, each radius grows by b * dt per step from r0.
        centre = np.where(s.clockwise, -CFG.spiral_offset, CFG.spiral_offset)
        rel = s.clean - np.stack([centre, 0 * centre], -1)[:, None]
        r = np.linalg.norm(rel, axis=-1)
        np.testing.assert_allclose(np.diff(r, axis=1), CFG.spiral_b * CFG.dt, atol=1e-4)
        assert CFG.r0_min <= r[:, 0].min() and r[:, 0].max() <= CFG.r0_max
        v = np.diff(rel, axis=1)
        cross = rel[:, :-1, 0] * v[..., 1] - rel[:, :-1, 1] * v[..., 0]
        assert np.all(cross[~s.clockwise] > 0) and np.all(cross[s.clockwise] < 0)
    assert abs(np.std(splits["train"].noisy - splits["train"].clean) - CFG.noise_std) < 0.005
    # No spiral of one split is a spiral (or a stretch of one) of another: start points differ.
    starts = {n: s.clean[:, 0] for n, s in splits.items()}
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        d = np.linalg.norm(starts[a][:, None] - starts[b][None], axis=-1)
        assert d.min() > 1e-4
    again = latent_ode.make_split(dataclasses.replace(CFG, seed=5, model="rnn"), "test")
    np.testing.assert_array_equal(again.noisy, splits["test"].noisy)  # data ignore the run seed
    other_n = latent_ode.make_split(dataclasses.replace(CFG, n_obs=5), "test")
    np.testing.assert_array_equal(other_n.clean, splits["test"].clean)
    assert other_n.idx.shape == (CFG.num_test, 5)


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


def _field(key):
    return ode_jax.nn.MLPField(4, 8, 1, activation=jax.nn.elu, key=key)


@pytest.mark.slow  # ~30 s
def test_per_sequence_grids_match_one_by_one():
    field = _field(jax.random.key(0))
    z0 = jax.random.normal(jax.random.key(1), (3, 4))
    grid = np.linspace(0.0, 2.0, 11)
    idx = np.array([[0, 2, 3, 9], [0, 1, 5, 10], [0, 4, 6, 7]])
    ts = grid[idx]
    ones = [ode_jax.odeint(call_field, z0[b], ts[b], field, **TIGHT).ys for b in range(3)]
    each, _ = solve_per_sequence(field, z0, jnp.asarray(ts), **TIGHT)
    union, _ = solve_on_union(field, z0, grid, **TIGHT)
    for b in range(3):
        np.testing.assert_allclose(each[b], ones[b], rtol=1e-6, atol=1e-8)
        np.testing.assert_allclose(union[idx[b], b], ones[b], rtol=1e-6, atol=1e-8)


# rnn (~16 s) with -m slow; the ODE-RNN encoder runs by default.
@pytest.mark.parametrize("encoder", [pytest.param("rnn", marks=pytest.mark.slow), "odernn"])
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
        z = ode_jax.odeint(call_field, z0[b], ts, model.field, **TIGHT).ys[-3:]
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


def _rnn(gap, key=0):
    return RNNBaseline(2, 7, use_gap=gap, use_mask=not gap, scale=2.0, key=jax.random.key(key))


def test_rnn_free_running_reads_its_own_predictions():
    x = jax.random.normal(jax.random.key(1), (6, 2))
    m = jnp.array([1.0, 0.0, 1.0, 1.0, 0.0, 1.0])
    gap = jnp.full(6, 0.1)
    for use_gap in (False, True):
        rnn = _rnn(use_gap)
        pred = rnn.run(x, m, gap)
        assert pred.shape == (6, 2)
        free = jnp.arange(6) >= 3
        rolled = rnn.run(x, m, gap, free)
        np.testing.assert_allclose(rolled[:3], pred[:3])  # teacher-forced part unchanged
        # Free from event 3 on: the same as feeding predictions in by hand, marked observed.
        x_hand, m_hand = x, m
        for i in range(3, 6):
            p = rnn.run(x_hand, m_hand, gap)
            x_hand, m_hand = x_hand.at[i].set(p[i - 1]), m_hand.at[i].set(1.0)
        np.testing.assert_allclose(rolled, rnn.run(x_hand, m_hand, gap), rtol=1e-6, atol=1e-6)
        # Extrapolation: read the window, then 4 more free-running predictions.
        ex = rnn.extrapolate(x[:3], m[:3], gap[:3], jnp.full(3, 0.1))
        np.testing.assert_allclose(ex, rolled[2:], rtol=1e-6, atol=1e-6)


def test_rnn_gap_extrapolation_feeds_back_every_kth_prediction():
    """commit_every=2: the fed-back predictions are those of a rollout with gaps of two
    steps; the ones between are read off the last fed-back event without changing it."""
    rnn = _rnn(True)
    x = jax.random.normal(jax.random.key(1), (4, 2))
    m, gap = jnp.ones(4), jnp.array([0.2, 0.1, 0.3, 0.05])
    every2 = rnn.extrapolate(x, m, gap, jnp.full(5, 0.1), commit_every=2)
    assert every2.shape == (6, 2)
    gap_to_second = gap.at[-1].set(0.15)  # the first fed-back prediction is the second one
    coarse = rnn.extrapolate(x, m, gap_to_second, jnp.full(2, 0.2))
    np.testing.assert_allclose(every2[1::2], coarse, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        every2[0], rnn.extrapolate(x, m, gap, jnp.full(1, 0.1))[0], rtol=1e-6
    )
    with pytest.raises(ValueError, match="use_gap"):
        _rnn(False).extrapolate(x, m, gap, jnp.full(5, 0.1), commit_every=2)


def test_rnn_inputs_mask_and_gap():
    x = jax.random.normal(jax.random.key(1), (5, 2))
    m = jnp.array([1.0, 0.0, 1.0, 0.0, 1.0])
    gap = jnp.array([0.1, 0.3, 0.2, 0.1, 0.4])
    grid_rnn, gap_rnn = _rnn(False), _rnn(True)
    # Unobserved values are never read; the plain RNN ignores time, the gap RNN reads it.
    x2 = x.at[1].set(99.0).at[3].set(-7.0)
    np.testing.assert_array_equal(grid_rnn.run(x, m, gap), grid_rnn.run(x2, m, gap))
    np.testing.assert_array_equal(grid_rnn.run(x, m, gap), grid_rnn.run(x, m, 2 * gap))
    assert not np.allclose(gap_rnn.run(x, m, gap), gap_rnn.run(x, m, 2 * gap))
    # Residual output: a zero readout predicts the last value read.
    zero = eqx.tree_at(
        lambda r: (r.readout.weight, r.readout.bias), grid_rnn, replace_fn=jnp.zeros_like
    )
    pred = zero.run(x, m, gap)
    np.testing.assert_allclose(pred, x[jnp.array([0, 0, 2, 2, 4])])
    grads = eqx.filter_grad(lambda r: jnp.sum(r.run(x, m, gap) ** 2))(gap_rnn)
    assert jnp.all(jnp.isfinite(grads.readout.weight)) and jnp.any(grads.cell.weight_ih != 0)


def test_rnn_events_grid_and_gaps():
    data = latent_ode.make_split(CFG, "val")
    x, t = data.observed()
    xg, m, gap, times = latent_ode.rnn_events(dataclasses.replace(CFG, model="rnn"), x, t, data.idx)
    assert xg.shape == (CFG.num_val, CFG.n_grid, 2) and np.all(np.sum(m, 1) == CFG.n_obs)
    np.testing.assert_array_equal(np.take_along_axis(np.asarray(xg), data.idx[..., None], 1), x)
    np.testing.assert_allclose(gap, CFG.dt, rtol=1e-6)
    np.testing.assert_allclose(times[0], data.ts[: CFG.n_grid])
    xo, m, gap, times = latent_ode.rnn_events(
        dataclasses.replace(CFG, model="rnn_gap"), x, t, data.idx
    )
    np.testing.assert_array_equal(xo, x)
    assert np.all(m == 1)
    np.testing.assert_allclose(gap[:, :-1], np.diff(t, axis=1), rtol=1e-6)
    np.testing.assert_allclose(gap[:, -1], data.ts[CFG.n_grid] - t[:, -1], rtol=1e-6)


def test_scores_compare_the_points_after_the_window(monkeypatch):
    """Extrapolation RMSE: predictions at the n_extrap grid points after the window against
    the clean and the noisy path there; the window RMSE at the predicted window points."""
    data = latent_ode.make_split(CFG, "val")
    n, clean = CFG.n_grid, data.clean
    S = clean.shape[0]
    fake = dict(
        extrap=clean[:, n:] + 1.0,
        window=clean[:, :n] + 0.5,
        window_idx=np.broadcast_to(np.arange(n), (S, n)),
    )
    monkeypatch.setattr(latent_ode, "_predict_jit", lambda *args: fake)
    s = latent_ode.scores(None, CFG, data, "v_")
    np.testing.assert_allclose(s["v_extrap"], 1.0, rtol=1e-6)
    np.testing.assert_allclose(s["v_interp"], 0.5, rtol=1e-6)
    noise = data.noisy[:, n:] - clean[:, n:]
    np.testing.assert_allclose(s["v_extrap_noisy"], np.sqrt(np.mean((1.0 - noise) ** 2)), rtol=1e-4)
    fake["extrap"] = clean[:, n - 1 : -1]  # one grid step early: scored as wrong
    fake["window"], fake["window_idx"] = clean[:, 3:5], np.broadcast_to([3, 4], (S, 2))
    s = latent_ode.scores(None, CFG, data, "v_")
    assert s["v_extrap"] > 0.01 and s["v_interp"] == 0.0


@pytest.mark.parametrize("model", latent_ode.MODELS)
def test_predictions_have_the_scored_shapes(model):
    cfg = dataclasses.replace(CFG, model=model)
    data = latent_ode.make_split(cfg, "val").take(slice(5))
    x, t = data.observed()
    net = latent_ode.init_model(cfg, jax.random.key(0))
    pred = latent_ode.predict(net, cfg, x, t, data.idx)
    assert pred["extrap"].shape == (5, cfg.n_extrap, 2)
    assert pred["window"].shape[:2] == pred["window_idx"].shape
    assert all(jnp.all(jnp.isfinite(v)) for v in pred.values())
    assert ("z" in pred) == (model == "latent_ode")


def _copy_run(src, dst, **changes):
    """A copy of a finished run folder with config fields changed (a stand-in for a run)."""
    shutil.copytree(src, dst)
    cfg = json.loads((dst / "config.json").read_text())
    (dst / "config.json").write_text(json.dumps({**cfg, **changes}))
    return str(dst)


@pytest.mark.slow  # ~27 s
def test_smoke_runs_select_on_validation_and_table_reads_test_once(tmp_path, monkeypatch):
    """Training and its evaluations never build the test split; `table` scores each run's
    checkpoint kept on validation on it, one metrics.csv row per (model, n, seed)."""
    real_split = latent_ode.make_split

    def guarded(cfg, split):
        if split == "test":
            raise AssertionError("the test split was read during training")
        return real_split(cfg, split)

    monkeypatch.setattr(latent_ode, "make_split", guarded)
    runs = []
    for model in ("latent_ode", "rnn_gap"):
        out = tmp_path / f"{model}_s0"
        argv = ["--smoke", "--model", model, "--out", str(out), "--no-progress"]
        metrics = latent_ode.main(argv)
        assert metrics["best"]["step"] in (2, 4) and (out / "best" / "model.eqx").exists()
        header = (out / "evals.csv").read_text().splitlines()[0]
        assert "val_extrap" in header and "train_extrap" in header and "test" not in header
        runs.append(str(out))
    runs.append(_copy_run(tmp_path / "latent_ode_s0", tmp_path / "latent_ode_s1", seed=1))
    summary = latent_ode.main(["val", *runs])
    assert "| latent_ode_s1 | latent_ode | 8 | 1 |" in summary
    monkeypatch.setattr(latent_ode, "make_split", real_split)
    table = latent_ode.main(["table", *runs, "--out", str(tmp_path / "res")])
    assert "n = 8" in table and " ± " in table and "(2 seeds)" in table
    with open(tmp_path / "res" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["model"], r["seed"]) for r in rows] == [
        ("latent_ode", "0"),
        ("latent_ode", "1"),
        ("rnn_gap", "0"),
    ]
    for r in rows:
        for key in ("extrap_rmse_val", "extrap_rmse_test", "interp_rmse_test"):
            assert np.isfinite(float(r[key]))
        best = json.loads((tmp_path / f"{r['model']}_s0" / "best" / "best.json").read_text())
        np.testing.assert_allclose(float(r["extrap_rmse_val"]), best["val_extrap"], rtol=1e-5)
    for fig in ("figure6_n8.png", "training_curves_n8.png"):
        assert (tmp_path / "res" / fig).stat().st_size > 0
    other = _copy_run(tmp_path / "rnn_gap_s0", tmp_path / "other", noise_std=0.3)
    with pytest.raises(ValueError, match="noise_std"):
        latent_ode.main(["table", runs[0], other, "--out", str(tmp_path / "res2")])


def test_family_fit_recovers_noise_free_spirals():
    from experiments import latent_ode_bounds

    cfg = dataclasses.replace(CFG, noise_std=0.0, n_obs=10)
    val = latent_ode.make_split(cfg, "val")
    x, t = (a.astype(np.float64) for a in val.observed())
    ts = np.broadcast_to(val.ts.astype(np.float64), val.clean.shape[:2])
    fit = latent_ode_bounds.fit_family(cfg, x, t)
    np.testing.assert_array_equal(fit["clockwise"], val.clockwise)
    np.testing.assert_allclose(latent_ode_bounds.family_path(cfg, fit, ts), val.clean, atol=1e-3)
    free = latent_ode_bounds.refit_rates(cfg, fit, x, t)
    np.testing.assert_allclose(free["b"], cfg.spiral_b, atol=1e-3)
    np.testing.assert_allclose(free["omega"], 1.0, atol=1e-3)
