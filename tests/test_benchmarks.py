"""The benchmark entry point runs end to end (tiny sizes, two methods, no NFE compiles)."""

import jax
import pytest

from benchmarks.methods import torch_available
from benchmarks.problems import PROBLEMS
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


@pytest.mark.slow  # a study script's smoke run (9-15 s); run with -m slow
def test_nested_jit_probe_compiles_both_variants_to_the_same_program():
    import jax

    import ode_jax._runge_kutta as rk
    from benchmarks.nested_jit import VARIANTS, main

    report = main(["--quick", "--cases", "spiral", "--compiles", "1"])
    rows = [line.split("|")[1:-1] for line in report.splitlines() if line.startswith("| spiral")]
    assert [r[1].strip() for r in rows] == list(VARIANTS)
    assert all(0 < float(r[2]) < float(r[3]) for r in rows)
    assert rows[0][4] == rows[1][4]  # XLA inlines the nested calls: same instruction count
    assert rk.jax is jax  # the variant without the nested jit is undone


@pytest.mark.slow  # a study script's smoke run (20-35 s); run with -m slow
def test_finite_check_compiles_every_variant_and_restores_the_library():
    import ode_jax._loop
    import ode_jax._odeint
    from benchmarks.finite_check import FUNCTIONS, VARIANTS, main
    from ode_jax._solver import all_finite

    report = main(["--quick", "--cases", "spiral", "--compiles", "1"])
    rows = [line.split("|")[1:-1] for line in report.splitlines() if line.startswith("| spiral")]
    cells = {(r[1].strip(), r[2].strip()): r for r in rows}
    for what in FUNCTIONS:
        assert all((what, v) in cells for v in VARIANTS)
        # Without the input check the program is smaller: the variants did take effect.
        size = {v: int(cells[what, v][5]) for v in VARIANTS}
        assert size[VARIANTS[2]] < size[VARIANTS[0]]
        assert size[VARIANTS[0]] != size[VARIANTS[1]]
    assert ode_jax._odeint.all_finite is all_finite and ode_jax._loop.all_finite is all_finite
    assert ode_jax._odeint._blame_input.__name__ == "_blame_input"
    alone = main(["--reductions-only", "--compiles", "1"])
    rows = [line.split("|")[1:-1] for line in alone.splitlines() if line.startswith("| ")][1:]
    assert len(rows) == 2 and int(rows[0][2]) < int(rows[1][2])  # float form: fewer ops


@pytest.mark.slow  # a study script's smoke run (9-15 s); run with -m slow
def test_small_system_times_every_method_and_counts_one_kernel_loops():
    from benchmarks.small_system import METHODS, Flags, _measure, table

    rows = _measure(Flags(outputs=("3",), batch=2, rounds=1))
    assert [(r["batch"], r["method"]) for r in rows] == [(b, m) for b in (0, 2) for m in METHODS]
    assert all(r["ms"] > 0 and r["hoisted"] >= 0 for r in rows)
    text = table({"default": rows})
    assert text.count("\n") == 2 + 2 * len(METHODS) and "| 3 | 2 | ode_jax |" in text


@pytest.mark.slow  # a study script's smoke run (9-15 s); run with -m slow
def test_controller_study_rules_and_report():
    import jax.numpy as jnp

    from benchmarks.controller_study import CONTROLLERS, main

    default, no_hold, never = (CONTROLLERS[c] for c in ("default", "no hold", "never shrink"))
    err, prev, ok = jnp.asarray(0.9), jnp.asarray(0.5), jnp.asarray(True)
    # An accepted step near the tolerance: the default shrinks the next, "never shrink" not.
    assert default.factor(err, prev, ok, 5) < 1 <= never.factor(err, prev, ok, 5)
    # Right after a rejection the default holds the step; without the hold it grows.
    small = jnp.asarray(0.01)
    assert default.factor(small, prev, ok, 5, True) == 1 < no_hold.factor(small, prev, ok, 5, True)
    text = main(["--problems", "logistic,spiral", "--solvers", "dopri5", "--rtols", "1e-3",
                 "--cases", "none", "--relu-seeds", "0"])  # fmt: skip
    rows = [line.split("|")[1:-1] for line in text.splitlines() if line.startswith("| ")]
    totals, spiral = rows[1], rows[-1]
    assert len(totals) == 2 + len(CONTROLLERS) and spiral[0].strip() == "spiral"
    nfe = [int(cell.split()[0]) for cell in spiral[1:]]
    assert all(n > 50 for n in nfe) and len(set(nfe)) > 1  # the controllers step differently
    assert "speed benchmark" not in text


@pytest.mark.slow  # a study script's smoke run (9-15 s); run with -m slow
def test_seminorm_study_reports_error_and_evaluations():
    from benchmarks.seminorm_study import METHODS, main

    text = main(["--cases", "relu0"])
    rows = [line.split("|")[1:-1] for line in text.splitlines() if line.startswith("| relu0")]
    assert [r[1].strip() for r in rows] == list(METHODS)
    err = {r[1].strip(): float(r[2]) for r in rows}
    bwd = {r[1].strip(): int(r[4]) for r in rows}
    assert all(0 < e < 0.2 for e in err.values())  # against the float64 reference
    assert bwd["continuous, seminorm"] < bwd["continuous"]


@pytest.mark.slow  # a study script's smoke run (20-35 s); run with -m slow
def test_groupnorm_forms_agree_and_the_script_times_both():
    import numpy as np

    import ode_jax.nn as onn
    from benchmarks.groupnorm import main
    from benchmarks.problems import GroupNormNHWC

    x = jax.random.normal(jax.random.key(0), (2, 3, 3, 8), jax.numpy.float32) * 3 + 1
    np.testing.assert_allclose(
        GroupNormNHWC(4)(x), onn.GroupNorm(4, 8, affine=False)(x), rtol=1e-5, atol=1e-5
    )
    text = main(["--quick", "--no-torch"])
    rows = [line for line in text.splitlines() if line.startswith("| ") and "ms" not in line]
    assert len(rows) == 4 and all(float(r.split("|")[-2]) > 0 for r in rows)


@pytest.mark.slow  # a study script's smoke run (9-15 s); run with -m slow
def test_downsample_stacks_agree_and_the_script_times_them():
    import numpy as np

    from benchmarks.downsample import main
    from benchmarks.methods import torch_available
    from benchmarks.problems import _t
    from benchmarks.train_step import Setup, make_data, make_jax_model, make_torch_model

    text = main(["--quick", "--rounds", "1"])
    rows = [line for line in text.splitlines() if line.startswith("| ") and "ms |" not in line]
    names = [r.split("|")[1].strip() for r in rows]
    native = ["JAX forward (Conv2d impl=native)", "JAX forward + gradient (Conv2d impl=native)"]
    layer = [
        f"conv4x4/2 on 26x26: {what}"
        for what in (
            "forward", "input gradient (impl=phase)", "input gradient (impl=native)",
            "weight gradient",
        )
    ]  # fmt: skip
    assert names[:8] == ["JAX forward", "JAX forward + gradient", *native, *layer]
    assert all(float(r.split("|")[-2]) > 0 for r in rows)
    if not torch_available():
        return
    assert names[8:] == ["torch forward", "torch forward + gradient"]
    # Both time the same function: the same weights give the same features.
    import torch

    setup = Setup.make(quick=True)
    model = make_jax_model(setup)
    x = make_data(setup)[0]
    with torch.no_grad():
        out_t = make_torch_model(model, setup).downsample(_t(x).permute(0, 3, 1, 2))
    np.testing.assert_allclose(
        out_t.permute(0, 2, 3, 1).cpu().numpy(), model.downsample(x), rtol=1e-4, atol=1e-4
    )


def test_list_flags_take_commas_or_spaces_and_all():
    from benchmarks import cli
    from benchmarks.run import parse_args

    args = parse_args(["--cases", "mlp,spiral", "--no-torch", "--no-nfe", "--quick", "--out", ""])
    assert cli.names(args.cases, ["mlp", "spiral"], "--cases") == ["mlp", "spiral"]
    assert (args.torch, args.nfe, args.repeats, args.compiles, args.out) == (False, False, 3, 1, "")
    assert parse_args(["--cases", "mlp", "spiral"]).cases == ("mlp", "spiral")
    assert cli.names(("all",), ["a", "b"], "--methods") == ["a", "b"]
    assert cli.numbers(("1,0.9", "0.5"), "--couplings") == [1.0, 0.9, 0.5]


@pytest.mark.parametrize(
    "module, argv, message",
    [
        ("run", ["--cases", "mlp,nope"], "--cases: unknown nope; choose from mlp"),
        ("run", ["--repeats", "0"], "--repeats must be >= 1"),
        ("run", ["--out", "no_such_folder/results.md"], "mkdir -p no_such_folder"),
        ("compile_probe", ["--methods", "torchdiffeq"], "--methods: unknown torchdiffeq"),
        ("train_step", ["--methods", "torchdiffeq", "--no-torch"], "no method left to run"),
        ("stiff", ["--problems", "robertson,vdp"], "--problems: unknown vdp"),
        ("adjoint_study", ["--couplings", "1,x"], "--couplings: could not convert"),
        ("small_system", ["--outputs", "1,100"], "give whole numbers >= 2"),
        ("groupnorm", ["--out", "no_such_folder/groupnorm.md"], "mkdir -p no_such_folder"),
        ("downsample", ["--out", "no_such_folder/downsample.md"], "mkdir -p no_such_folder"),
        ("step_cost", ["--cases", "mlp,nope"], "--cases: unknown nope"),
        ("controller_study", ["--problems", "lorenz,vdp"], "--problems: unknown vdp"),
        ("seminorm_study", ["--cases", "relu3"], "--cases: unknown relu3"),
        ("adjoint_study", ["--training", "no_such_folder"], "--training no_such_folder"),
    ],
)
def test_user_mistakes_are_caught_before_measuring(module, argv, message, tmp_path, monkeypatch):
    import importlib

    from benchmarks.cli import UserError

    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match=message.replace(".", r"\.")):
        importlib.import_module(f"benchmarks.{module}").main(argv)


def test_a_user_mistake_is_one_line(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.compile_probe", "--cases", "nope"],
        cwd=root,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: --cases: unknown nope; choose from mlp, mlp_eqx, odenet, odenet_plain, spiral"
    ]


@pytest.mark.skipif(not torch_available(), reason="torch/torchdiffeq not installed")
@pytest.mark.parametrize("case", ["mlp", "mlp_eqx", "odenet", "odenet_plain", "spiral"])
def test_torch_field_equals_the_jax_field(case):
    """Every library integrates the same function: the torch module built from the JAX weights
    gives the JAX field's value at y0 (up to float32 round-off)."""
    import numpy as np
    import torch

    problem = PROBLEMS[case](quick=True)
    module, y0_t, _, _ = problem.make_torch()
    # The benchmark fields are written as in a user's script: implicit broadcasting allowed.
    with jax.numpy_rank_promotion("allow"), jax.numpy_dtype_promotion("standard"):
        want = np.asarray(problem.vf(0.3, problem.y0, problem.params))
    with torch.no_grad():
        got = module(torch.tensor(0.3), y0_t).numpy()
    if got.ndim == 4:  # torch's ODE-Net is NCHW
        got = got.transpose(0, 2, 3, 1)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


@pytest.mark.slow
def test_step_cost_keeping_the_stages_halves_the_backward_runs_of_f(tmp_path):
    from benchmarks.step_cost import main

    out = tmp_path / "step_cost.md"
    # The benchmark fields are written as in a user's script: implicit broadcasting allowed.
    with jax.numpy_rank_promotion("allow"), jax.numpy_dtype_promotion("standard"):
        report = main(["--quick", "--cases", "mlp", "--out", str(out)])
    assert out.read_text() == report
    rows = {
        cells[0]: cells[1:]
        for line in report.splitlines()
        if line.startswith("| ") and not line.startswith("| method")
        for cells in [[c.strip() for c in line.strip("|").split("|")]]
    }
    assert set(rows) == {
        "discrete default (keeps stages)",
        "discrete keep_stages=False",
        "discrete keep_stages=False, looped stages",
        "diffrax-rca",
        "jax.experimental.ode",
    }
    bwd = {name: int(cells[-1]) for name, cells in rows.items()}
    assert bwd["discrete keep_stages=False"] == 2 * bwd["discrete default (keeps stages)"] > 0
    # The looped layout runs the same stages as the unrolled one (the same computed map).
    assert bwd["discrete keep_stages=False, looped stages"] == bwd["discrete keep_stages=False"]


def test_rounds_do_not_keep_each_method_behind_the_same_one():
    from benchmarks.measure import round_order

    items = [f"m{k}" for k in range(7)]
    assert round_order(items, 0) == items
    predecessors = {m: set() for m in items}
    for i in range(6):
        order = round_order(items, i)
        assert sorted(order) == sorted(items)
        assert order == round_order(items, i)  # the same order every run
        for before, after in zip(order, order[1:]):
            predecessors[after].add(before)
    # Under a rotation every method but the one listed first has one predecessor only.
    assert all(len(p) >= 2 for p in predecessors.values()), predecessors
