"""The stiff (Robertson) experiment: its --smoke run moves the rates towards the truth and the
loss down, logs forward and backward solver counts, and the side-by-side comparison shows the
explicit solver stopping at max_steps where the implicit one finishes."""

import json

import numpy as np
import pytest

from configs.stiff import StiffConfig
from experiments import stiff


@pytest.mark.slow  # ~30 s; stiff solvers tested in test_stiff.py
def test_smoke_run_learns_rates_and_logs_solver_counts(tmp_path):
    metrics = stiff.main(["--smoke", "--out", str(tmp_path), "--no-progress"])
    files = {p.name for p in tmp_path.iterdir()}
    assert {"metrics.json", "fit.png", "loss.png", "rates.png", "solver_cost.png"} <= files
    assert {"compare.json", "compare.csv", "history.csv"} <= files
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["steps"] == metrics["steps"] == stiff.SMOKE["steps"]

    # From a factor of 3 off, every rate ends closer to the truth (in log distance), and the
    # loss falls by an order of magnitude.
    cfg = StiffConfig()
    for i in range(3):
        start = abs(np.log(cfg.k_init_factors[i]))
        end = abs(np.log(saved[f"k{i + 1}"] / cfg.k_true[i]))
        assert end < 0.7 * start, (i, saved[f"k{i + 1}"])
    history = stiff.report.read_csv(tmp_path / "history.csv")
    assert saved["final_train_mse"] < 0.1 * history[0]["loss"]

    # Forward and backward counts of every training step are logged; the implicit solver
    # forms Jacobians and LUs (rodas5: one of each per step).
    for key in ("nfe", "num_steps", "num_jacobians", "num_lu"):
        assert f"{key}_fwd" in history[0] and f"{key}_bwd" in history[0]
    assert history[-1]["num_jacobians_fwd"] == history[-1]["num_steps_fwd"] > 0
    assert history[-1]["nfe_bwd"] > 0 and history[-1]["num_steps_bwd"] > 0

    # Side by side at the same max_steps: tsit5 stops at max_steps long before 1e5 s; rodas5
    # reaches it in two orders of magnitude fewer steps.
    compare = json.loads((tmp_path / "compare.json").read_text())
    rows = {(r["solver"], r["model"]): r for r in compare["training_step"]}
    explicit, implicit = rows["tsit5", "initial"], rows["rodas5", "initial"]
    assert explicit["result"] == 1 and explicit["num_steps_fwd"] == cfg.max_steps
    assert explicit["t_reached"] < 1e3
    assert implicit["result"] == 0 and implicit["t_reached"] == cfg.t_last
    assert implicit["num_steps_fwd"] < explicit["num_steps_fwd"] / 10
    assert saved["compare_explicit_long"]["result"] == 1


def test_data_scales_and_times():
    cfg = StiffConfig(n_obs=9, batch_size=9)
    t_obs, t_val = stiff.times(cfg)
    np.testing.assert_allclose(t_obs[[0, -1]], [1e-5, 1e5])
    assert np.all((t_val > t_obs[:-1]) & (t_val < t_obs[1:]))
    data = stiff.dataset(cfg)
    # B peaks at 3.65e-5 (Robertson's well-known value); mass is conserved.
    np.testing.assert_allclose(data["scale"][1], 3.65e-5, rtol=0.02)
    np.testing.assert_allclose(data["y_obs_clean"].sum(axis=1), 1.0, atol=1e-9)
