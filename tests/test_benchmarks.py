"""The benchmark entry point runs end to end (tiny sizes, two methods, no NFE compiles)."""

import pytest

from benchmarks.run import main


@pytest.mark.slow
def test_benchmark_quick_runs(tmp_path):
    out = tmp_path / "results.md"
    report = main(
        [
            "--quick",
            "--cases",
            "spiral",
            "--methods",
            "ode_jax-discrete,jax.experimental.ode",
            "--repeats",
            "1",
            "--compiles",
            "2",
            "--no-nfe",
            "--out",
            str(out),
        ]
    )
    assert out.read_text() == report
    assert "| ode_jax-discrete |" in report and "| jax.experimental.ode |" in report
    assert "(compile: 2)" in report
