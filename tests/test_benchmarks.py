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


def test_compile_time_is_the_median_of_the_compilations():
    from benchmarks.measure import Runner

    r = Runner("m", "jax", fwd=lambda: None, grad=lambda: None)
    for fwd_s, grad_s in [(3.0, 9.0), (1.0, 4.0), (2.0, 5.0)]:
        r.add_compile(fwd_s, grad_s)
    assert (r.compile_fwd_s, r.compile_grad_s) == (2.0, 5.0)
    assert r.compile_times == {"fwd": [3.0, 1.0, 2.0], "grad": [9.0, 4.0, 5.0]}
