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


def test_compile_probe_reports_steps_and_program_size():
    from benchmarks.compile_probe import hlo_counts, main

    counts = hlo_counts(
        "HloModule m\n\nENTRY %main (p: f32[2]) -> f32[2] {\n"
        "  %p = f32[2]{0} parameter(0)\n"
        "  %f = f32[2]{0} fusion(%p), kind=kLoop, calls=%fc\n"
        "  ROOT %d = f32[2]{0} dot(%f, %f)\n}\n"
    )
    assert counts["instructions"] == 3 and counts["fusions"] == 1 and counts["dots"] == 1
    report = main(
        ["--quick", "--cases", "spiral", "--methods", "ode_jax-continuous", "--compiles", "1"]
    )
    rows = [line for line in report.splitlines() if line.startswith("| ode_jax-continuous |")]
    assert [row.split("|")[2].strip() for row in rows] == ["fwd", "grad"]
    for row in rows:
        trace, lower, compile_s, total, instructions = row.split("|")[3:8]
        assert 0 < float(compile_s) < float(total) and int(instructions) > 0
