"""benchmarks/adjoint_study.py: its core on a tiny problem (seconds), so the study cannot rot;
the whole script, with a training run to read back, is a slow test. And the spiral config's
reversible option, which the study's training runs use."""

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest

import ode_jax
from benchmarks import adjoint_study as study
from benchmarks.problems import make_spiral
from configs.spiral import SpiralConfig


def _tiny_spiral():
    return dataclasses.replace(
        make_spiral(quick=True), ts=np.linspace(0.0, 2.0, 5, dtype=np.float32)
    )


@pytest.mark.slow  # ~30-65 s; the study's own outputs are committed
def test_study_core_on_a_tiny_spiral():
    problem = _tiny_spiral()
    ref, _ = study.reference_grad(problem, "tsit5", 1e-10)
    (row,), _ = study.compare_methods(
        problem, ["ode_jax-reversible"], ref, rounds=1, sample_s=0.0, log=lambda msg: None
    )
    assert row["rel_err"] < 1e-3  # float32 at rtol 1e-6
    assert row["steps_many"] >= 8 * row["steps"]
    assert row["temp_many"] == row["temp"]  # buffers are sized by max_steps, not by the steps
    assert row["grad_ms"] > 0 and row["compile_s"] > 0
    table = study.markdown_table([row], study.METHOD_COLUMNS)
    assert len(table.splitlines()) == 3 and table.splitlines()[2].startswith("| ode_jax-rev")

    (row,) = study.reversible_sweep(
        "spiral", problem, ref, (jnp.float64,), (0.999,), ((1e-6, 1e-8),), log=lambda msg: None
    )
    assert row["result"] == "successful"
    assert 0 <= row["recon"] < 1e-10 and row["rev_vs_disc"] < 1e-10  # exact up to round-off
    assert row["rev_vs_ref"] < 1e-4


def test_spiral_config_reversible_option():
    settings = SpiralConfig(adjoint="reversible", reversible=True).solve_settings()
    assert settings.solver == ode_jax.reversible("dopri5") and settings.adjoint == "reversible"
    assert SpiralConfig(reversible=True).solve_settings(solver="tsit5").solver == "tsit5"
    with pytest.raises(ValueError, match="needs a reversible solver: add --reversible"):
        SpiralConfig(adjoint="reversible")


@pytest.mark.slow
def test_study_end_to_end_reads_a_training_run(tmp_path):
    from experiments import spiral

    runs = tmp_path / "runs"
    argv = ["--smoke", "--adjoint", "reversible", "--reversible", "--no-progress"]
    spiral.main([*argv, "--out", str(runs / "spiral_reversible")])
    out = tmp_path / "study.md"
    report = study.main(
        ["--quick", "--cases", "spiral", "--methods", "ode_jax-reversible,diffrax-backsolve",
         "--sweep-cases", "spiral", "--couplings", "0.999", "--rounds", "1",
         "--training", str(runs), "--out", str(out)]
    )  # fmt: skip
    assert out.read_text() == report
    for heading in ("## 1.", "## 2.", "## 3.", "## 4."):
        assert heading in report
    assert "| spiral_reversible | reversible | reversible(dopri5) |" in report
