"""Every experiment's --smoke run: finishes in seconds and writes its outputs."""

import json

import pytest

from experiments import spiral


def test_spiral_smoke(tmp_path, capsys):
    argv = ["--smoke", "--out", str(tmp_path), "--no-progress"]
    metrics = spiral.main(argv)
    files = {p.name for p in tmp_path.iterdir()}
    expected = {"config.json", "metrics.json", "history.csv", "evals.csv", "checkpoint"}
    figures = {"training_curve.png", "trajectories.png", "phase_portrait.png", "vector_field.png"}
    assert expected | figures <= files
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["steps"] == metrics["steps"] == spiral.SMOKE["steps"]
    assert saved["nfe_fwd_per_step"] > 0 and saved["nfe_bwd_per_step"] > 0
    assert {"mae", "rmse", "nfe"} <= set(saved["final_eval"])
    assert json.loads((tmp_path / "config.json").read_text())["smoke"] is True

    # The same command again finds the final checkpoint: nothing is retrained.
    again = spiral.main(argv)
    assert again["final_eval"] == metrics["final_eval"]
    assert "step 3" not in capsys.readouterr().out.split("wrote")[-1]


@pytest.mark.slow  # ~30 s
def test_cnf_smoke(tmp_path):
    from experiments import cnf

    argv = ["--smoke", "--task", "mle", "--data", "8gaussians", "--model", "cnf_planar"]
    metrics = cnf.main([*argv, "--out", str(tmp_path), "--no-progress"])
    files = {p.name for p in tmp_path.iterdir()}
    assert {"metrics.json", "density.npz", "density.png", "transport.png"} <= files
    assert metrics["steps"] == cnf.SMOKE["steps"] and metrics["nfe_fwd_per_step"] > 0
    final = metrics["final_eval"]
    assert final["nfe"] > 0 and abs(final["gap"] - (final["test_nll"] - metrics["entropy"])) < 1e-4
    assert abs(metrics["grid_mass"] - 1) < 0.2  # a 12x12 grid over [-4, 4]^2: coarse
