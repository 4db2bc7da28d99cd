"""Exact gradients at O(1) memory: ode_jax's reversible adjoint against its continuous and
discrete adjoints and diffrax's RecursiveCheckpointAdjoint and BacksolveAdjoint.

    python -m benchmarks.adjoint_study --out benchmarks/adjoint_study.md  # ~14 min, 2 CPU cores
    python -m benchmarks.adjoint_study --quick --out ''                   # small sizes, ~5 min

Every method solves with dopri5 (the reversible adjoint: ``ode_jax.reversible("dopri5")``,
coupling 0.999) at the problem's tolerances, in float32, as ``benchmarks.run``; the ODE-Net
block has batch 32 (not 128) so that its float64 reference stays affordable. The report:

1. Per problem and method: the gradient's error against a float64 reference (ode_jax's discrete
   adjoint at a tight tolerance); XLA temp of the compiled ``jit(grad)`` and peak RSS growth
   over one call, at the problem's step count, at ~10x the steps (step size capped at a tenth
   of the mean step, same ``max_steps``) and with 10x ``max_steps``; gradient wall time and
   compile time.
2. Exactness: the reversible adjoint's gradient against the discrete adjoint's gradient of the
   same reversible solve, in float32 and float64.
3. Stability: the reversible backward pass's reconstruction error (the probe's
   "reconstruction_error") against the coupling, the dtype and the tolerance.
4. Training: the spiral job under each ode_jax adjoint, read from ``--training`` (run
   separately; ``results/adjoint_study/PROVENANCE.md`` has the commands).
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import sys
import time
import warnings
from collections.abc import Callable
from functools import partial
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

import ode_jax

from . import cli
from .measure import _aot, interleaved_medians, markdown_table, number, rss_peak_delta_mb
from .problems import Problem, make_mlp, make_odenet, make_spiral
from .run import machine_description

MAX_STEPS = 4096  # as benchmarks.methods (diffrax's default)
SWEEP_MAX_STEPS = 16384
COUPLINGS = (1.0, 0.999, 0.99, 0.9)
# The float64 reference per problem: ode_jax's discrete adjoint with this solver and
# rtol = atol. dopri5 for the ODE-Net: its ReLUs put kinks in the solution, where dopri8 loses
# its order (70 steps against dopri5's 16 at 1e-6).
REFERENCE = {"mlp": ("dopri8", 1e-12), "odenet": ("dopri5", 1e-9), "spiral": ("dopri8", 1e-12)}
# (rtol, atol) of the stability sweep: large steps, the benchmark's, small steps.
SWEEP_TOLS = ((1e-3, 1e-6), (1e-6, 1e-8), (1e-8, 1e-10))
RESULT_NAMES = {code: name for name, code in vars(ode_jax.RESULTS).items() if isinstance(code, int)}


# ---------------------------------------------------------------------------------------------
# Problems and methods.


def study_problems(quick: bool = False) -> dict[str, Problem]:
    """The benchmark problems (a)-(c); the ODE-Net block with batch 32 instead of 128."""
    odenet = make_odenet(quick)
    if not quick:
        odenet = dataclasses.replace(
            odenet, y0=odenet.y0[:32], title=odenet.title.replace("batch 128", "batch 32")
        )
    return {"mlp": make_mlp(quick), "odenet": odenet, "spiral": make_spiral(quick)}


def cast(problem: Problem, dtype) -> Problem:
    """The problem with its state, parameters and times in ``dtype``."""

    def to(x):
        return x.astype(dtype) if eqx.is_inexact_array(x) else x

    return dataclasses.replace(
        problem,
        y0=to(problem.y0),
        params=jax.tree.map(to, problem.params),
        ts=problem.ts.astype(np.dtype(dtype)),
    )


def _ode_jax(solver, adjoint) -> Callable:
    def build(problem: Problem, max_steps: int, dtmax: float | None):
        def solve(params):
            sol = ode_jax.odeint(
                problem.vf, problem.y0, problem.ts, params, solver=solver, rtol=problem.rtol,
                atol=problem.atol, adjoint=adjoint, max_steps=max_steps, dtmax=dtmax,
            )  # fmt: skip
            return sol.ys, sol.stats["num_accepted"]

        return solve

    return build


def _diffrax(adjoint_name: str) -> Callable:
    def build(problem: Problem, max_steps: int, dtmax: float | None):
        import diffrax

        adjoint = getattr(diffrax, adjoint_name)()
        controller = diffrax.PIDController(rtol=problem.rtol, atol=problem.atol, dtmax=dtmax)
        ts = problem.ts

        def solve(params):
            sol = diffrax.diffeqsolve(
                diffrax.ODETerm(problem.vf), diffrax.Dopri5(), ts[0], ts[-1], None, problem.y0,
                params, saveat=diffrax.SaveAt(ts=ts), stepsize_controller=controller,
                adjoint=adjoint, max_steps=max_steps,
            )  # fmt: skip
            return sol.ys, sol.stats["num_accepted_steps"]

        return solve

    return build


# name -> build(problem, max_steps, dtmax) -> (params -> (ys, accepted steps))
METHODS: dict[str, Callable] = {
    "ode_jax-continuous": _ode_jax("dopri5", "continuous"),
    "ode_jax-discrete": _ode_jax("dopri5", "discrete"),
    "ode_jax-reversible": _ode_jax(ode_jax.reversible("dopri5"), "reversible"),
    "diffrax-rca": _diffrax("RecursiveCheckpointAdjoint"),
    "diffrax-backsolve": _diffrax("BacksolveAdjoint"),
}


def grad_fn(solve: Callable, problem: Problem) -> Callable:
    """params -> (gradient of the problem's loss, accepted forward steps)."""

    def loss(params):
        ys, steps = solve(params)
        return problem.loss(ys), steps

    return jax.grad(loss, has_aux=True)


def flat(tree) -> np.ndarray:
    """The tree's float leaves as one float64 vector."""
    leaves = [np.ravel(np.asarray(x, np.float64)) for x in jax.tree.leaves(tree)]
    return np.concatenate(leaves)


def rel_err(g: np.ndarray, ref: np.ndarray) -> float:
    """max |g - ref| / max |ref| (NaN where g is not finite)."""
    return float(np.max(np.abs(g - ref)) / np.max(np.abs(ref)))


def reference_grad(problem: Problem, solver: str, tol: float) -> tuple[np.ndarray, int]:
    """The float64 gradient of the loss: discrete adjoint at rtol = atol = tol; and its steps."""
    p = dataclasses.replace(cast(problem, jnp.float64), rtol=tol, atol=tol)
    solve = _ode_jax(solver, "discrete")(p, SWEEP_MAX_STEPS, None)
    g, steps = jax.jit(grad_fn(solve, p))(p.params)
    return flat(g), int(steps)


# ---------------------------------------------------------------------------------------------
# 1. Gradient error, memory and time per method.


def _measured_call(fn: Callable):
    """fn()'s result, the call's wall seconds and the peak RSS growth over it (MiB)."""
    out = []
    t0 = time.perf_counter()
    rss = rss_peak_delta_mb(lambda: out.append(jax.block_until_ready(fn())))
    return out[0], time.perf_counter() - t0, rss


def compare_methods(problem: Problem, methods, ref, rounds: int, sample_s: float, log):
    """One row per method: error, steps, memory and times (see the module docstring)."""
    params = problem.params
    plain = _ode_jax("dopri5", "discrete")(problem, MAX_STEPS, None)
    n_base = int(jax.jit(plain)(params)[1])
    dtmax = float(abs(problem.ts[-1] - problem.ts[0])) / (10 * n_base)
    rows, calls = [], {}
    for name in methods:
        log(f"  {name} ...")
        # The problem as is, ~10x the steps, 10x max_steps: (compiled, compile s, temp MiB).
        base, many, big = (
            _aot(grad_fn(METHODS[name](problem, max_steps, cap), problem), params)
            for max_steps, cap in ((MAX_STEPS, None), (MAX_STEPS, dtmax), (10 * MAX_STEPS, None))
        )
        g, steps = jax.block_until_ready(base[0](params))
        # The 10x run is slow: measured on its first (only) call.
        (_, steps_many), many_s, rss_many = _measured_call(partial(many[0], params))
        calls[name] = lambda run=base[0]: jax.block_until_ready(run(params))
        rows.append(
            dict(
                method=name,
                rel_err=rel_err(flat(g), ref),
                steps=int(steps),
                temp=base[2],
                rss=rss_peak_delta_mb(calls[name]),
                steps_many=int(steps_many),
                temp_many=many[2],
                rss_many=rss_many,
                many_s=many_s,
                temp_big=big[2],
                compile_s=float(np.median([base[1], many[1], big[1]])),
            )
        )
    log(f"  timing {rounds} interleaved rounds ...")
    medians = interleaved_medians(calls, rounds, sample_s)
    for row in rows:
        row["grad_ms"] = 1e3 * medians[row["method"]]
    return rows, dtmax


# ---------------------------------------------------------------------------------------------
# 2 and 3. The reversible adjoint against the discrete adjoint of the same reversible solve.


def _probed_grad(problem: Problem, solver, adjoint: str) -> Callable:
    """jit of (params, rtol, atol) -> (grad, probe grad), (accepted steps, result code)."""
    dtype = jax.tree.leaves(problem.y0)[0].dtype

    def loss(params, probe, rtol, atol):
        sol = ode_jax.odeint(
            problem.vf, problem.y0, problem.ts, params, solver=solver, rtol=rtol, atol=atol,
            adjoint=adjoint, probe=probe, max_steps=SWEEP_MAX_STEPS, throw=False,
        )  # fmt: skip
        return problem.loss(sol.ys), (sol.stats["num_accepted"], sol.result)

    grad = jax.grad(loss, argnums=(0, 1), has_aux=True)
    return jax.jit(lambda params, rtol, atol: grad(params, ode_jax.make_probe(dtype), rtol, atol))


def reversible_sweep(name, problem: Problem, ref, dtypes, couplings, tols, log) -> list[dict]:
    """Reconstruction error and gradient errors of reversible(dopri5) solves, one row per
    (dtype, coupling, tolerance); tolerances are traced, so one compile per coupling and
    adjoint."""
    rows = []
    for dtype in dtypes:
        p = cast(problem, dtype)
        plain = _probed_grad(p, "dopri5", "discrete")  # the base method, for comparison
        base_errs = [rel_err(flat(plain(p.params, *tol)[0][0]), ref) for tol in tols]
        for lam in couplings:
            log(f"  {name} {jnp.dtype(dtype).name} coupling {lam} ...")
            solver = ode_jax.reversible("dopri5", coupling=lam)
            rev, disc = (_probed_grad(p, solver, a) for a in ("reversible", "discrete"))
            for (rtol, atol), base_err in zip(tols, base_errs):
                (g_rev, probe), (steps, result) = rev(p.params, rtol, atol)
                (g_disc, _), _ = disc(p.params, rtol, atol)
                g_rev, g_disc = flat(g_rev), flat(g_disc)
                recon = float(ode_jax.probe_stats(probe)["reconstruction_error"])
                ok = int(result) == ode_jax.RESULTS.successful  # else no gradient to speak of
                rows.append(
                    dict(
                        problem=name,
                        dtype=jnp.dtype(dtype).name,
                        coupling=lam,
                        rtol=rtol,
                        atol=atol,
                        steps=int(steps),
                        result=RESULT_NAMES[int(result)],
                        recon=recon if ok else None,
                        rev_vs_disc=rel_err(g_rev, g_disc) if ok else None,
                        rev_vs_ref=rel_err(g_rev, ref) if ok else None,
                        base_vs_ref=base_err,
                    )
                )
    return rows


# ---------------------------------------------------------------------------------------------
# 4. Training runs (made separately), read back.


def training_rows(root: Path) -> list[dict]:
    rows = []
    for run in sorted(root.glob("*/metrics.json")):
        metrics = json.loads(run.read_text())
        cfg = json.loads((run.parent / "config.json").read_text())
        ev = metrics.get("final_eval", {})
        rows.append(
            dict(
                run=run.parent.name,
                adjoint=cfg["adjoint"],
                solver=f"reversible({cfg['solver']})" if cfg.get("reversible") else cfg["solver"],
                steps=metrics["steps"],
                mae=ev.get("mae", float("nan")),
                rmse=ev.get("rmse", float("nan")),
                max_err=ev.get("max_err", float("nan")),
                nfe_fwd=metrics.get("nfe_fwd_per_step", float("nan")),
                nfe_bwd=metrics.get("nfe_bwd_per_step", float("nan")),
                first_s=metrics["first_step_seconds"],
                train_s=metrics["train_seconds"],
                wall_s=metrics["wall_seconds_this_process"],
            )
        )
    return rows


# ---------------------------------------------------------------------------------------------
# The report.


def _mem(mib: float) -> str:
    if not np.isfinite(mib):
        return "–"
    return f"{1024 * mib:.0f} KiB" if mib < 1 else f"{mib:.1f} MiB"


def _err(v) -> str:
    """An error: "–" where there is none (failed solve), "NaN" where it is not finite."""
    return "–" if v is None else "NaN" if not np.isfinite(v) else f"{v:.1e}"


METHOD_COLUMNS = [
    ("method", "method", str),
    ("rel_err", "grad rel err", number("{:.1e}")),
    ("steps", "steps", number("{}")),
    ("temp", "XLA temp", _mem),
    ("rss", "RSS peak", _mem),
    ("steps_many", "steps (10x run)", number("{}")),
    ("temp_many", "XLA temp (10x run)", _mem),
    ("rss_many", "RSS peak (10x run)", _mem),
    ("temp_big", "XLA temp (10x max_steps)", _mem),
    ("grad_ms", "grad ms", number("{:.1f}")),
    ("many_s", "grad s (10x run, 1 call)", number("{:.2f}")),
    ("compile_s", "compile grad s", number("{:.2f}")),
]
SWEEP_COLUMNS = [
    ("problem", "problem", str),
    ("dtype", "dtype", str),
    ("coupling", "coupling", number("{:g}")),
    ("rtol", "rtol", number("{:g}")),
    ("atol", "atol", number("{:g}")),
    ("steps", "steps", number("{}")),
    ("result", "forward result", str),
    ("recon", "reconstruction error", _err),
    ("rev_vs_disc", "rev vs discrete", _err),
    ("rev_vs_ref", "rev vs reference", _err),
    ("base_vs_ref", "plain dopri5 vs reference", _err),
]
TRAINING_COLUMNS = [
    ("run", "run", str),
    ("adjoint", "adjoint", str),
    ("solver", "solver", str),
    ("steps", "steps", number("{}")),
    ("mae", "eval mean abs err", number("{:.4f}")),
    ("rmse", "eval RMS err", number("{:.4f}")),
    ("max_err", "eval max err", number("{:.3f}")),
    ("nfe_fwd", "NFE fwd / step", number("{:.1f}")),
    ("nfe_bwd", "NFE bwd / step", number("{:.1f}")),
    ("first_s", "first step s", number("{:.1f}")),
    ("train_s", "train s", number("{:.0f}")),
    ("wall_s", "wall s", number("{:.0f}")),
]

NOTES = """\
All methods use dopri5 (ode_jax-reversible: `ode_jax.reversible("dopri5")`, coupling 0.999)
at the problem's tolerances, float32. **grad rel err** = max |g - g_ref| / max |g_ref| over all
parameters, against the float64 reference named under each table. **steps**: accepted forward
steps. **XLA temp**: `jit(grad).lower(params).compile().memory_analysis()` temp bytes;
**RSS peak**: growth of the process's peak RSS over one gradient call (after a warm-up call;
in the 10x run, its first call).
**10x run**: the same problem with the step size capped (`dtmax`) at a tenth of the plain
dopri5 solve's mean step, same `max_steps` ({max_steps}), so ~10x the steps. **10x max_steps**:
the problem as is, compiled with `max_steps` = {big}: every method sizes its buffers by
`max_steps` at compile time, so this, not the 10x run, shows how memory scales with the number
of steps a solve may take. **grad ms**: median of {rounds} interleaved rounds after compile,
each sample >= {sample_s:g} s of back-to-back calls; **compile grad s**: trace + lower +
compile of `jit(grad)`, the median of the three programs above (they differ only in constants
and buffer sizes).
"""

SWEEP_NOTES = """\
`ode_jax.reversible("dopri5", coupling)`, `max_steps` {max_steps}, `throw=False` (a failed
forward solve is reported, not raised). **reconstruction error**: the probe's max abs error of
the state the backward pass rebuilt at the output times / y0. **rev vs discrete**: relative
max difference between the reversible adjoint's gradient and the discrete adjoint's gradient
of the same solve (both exact gradients of the computed solution: any difference is
reconstruction round-off). **rev vs reference**: relative error against the float64 reference
gradient of the exact solution (solver error included); **plain dopri5 vs reference**: the
same for the discrete adjoint of plain dopri5 at the same tolerance and dtype, for scale.
"–": the forward solve failed; "NaN": the backward pass overflowed.
"""


@dataclasses.dataclass(frozen=True)
class Args:
    """Exact gradients at O(1) memory: the reversible adjoint against the other adjoints.

    List flags take names or numbers separated by commas or spaces (``--cases mlp,spiral``).
    """

    cases: tuple[str, ...] = ("mlp", "odenet", "spiral")  # of mlp, odenet, spiral
    # of ode_jax-continuous, ode_jax-discrete, ode_jax-reversible, diffrax-rca, diffrax-backsolve
    methods: tuple[str, ...] = tuple(METHODS)
    couplings: tuple[str, ...] = tuple(map(str, COUPLINGS))  # of the stability sweep
    sweep_cases: tuple[str, ...] = ("spiral", "mlp")  # problems of the stability sweep
    rounds: int = 7  # timed rounds per method
    sample_s: float = 0.1  # seconds per timed sample (min)
    quick: bool = False  # small problems, 3 rounds
    training: str = "results/adjoint_study"  # folder of spiral runs ('' = none)
    out: str = "benchmarks/adjoint_study.md"  # report ('' = none)

    def __post_init__(self):
        if self.rounds < 1 or not self.sample_s >= 0:
            raise cli.UserError("--rounds must be >= 1 and --sample-s >= 0")


def parse_args(argv=None) -> Args:
    """The flags, checked, with the lists split (``--cases a,b`` -> ``("a", "b")``)."""
    args = cli.parse(Args, argv, "adjoint_study")
    args = dataclasses.replace(
        args,
        cases=tuple(cli.names(args.cases, list(REFERENCE), "--cases")),
        sweep_cases=tuple(cli.names(args.sweep_cases, list(REFERENCE), "--sweep-cases")),
        methods=tuple(cli.names(args.methods, list(METHODS), "--methods")),
        couplings=tuple(map(str, cli.numbers(args.couplings, "--couplings"))),
    )
    if args.quick:
        args = dataclasses.replace(
            args, rounds=min(args.rounds, 3), sample_s=min(args.sample_s, 0.01)
        )
    if args.training and not Path(args.training).is_dir():
        raise cli.UserError(f"--training {args.training}: no such folder ('' = no training table)")
    cli.writable(args.out)
    return args


def main(argv=None) -> str:
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    jax.config.update("jax_enable_x64", True)  # the references; the methods stay float32
    args = parse_args(argv)
    t_start, load_start = time.perf_counter(), os.getloadavg()

    problems = study_problems(args.quick)
    cases, sweep_cases = list(args.cases), list(args.sweep_cases)
    couplings = [float(c) for c in args.couplings]
    refs, sections, exact_rows, sweep_rows = {}, [], [], []
    for case in dict.fromkeys(cases + sweep_cases):
        problem = problems[case]
        solver, tol = REFERENCE[case]
        cli.log(f"{problem.title}\n  float64 reference ({solver}, discrete, tol {tol:g}) ...")
        t0 = time.perf_counter()
        refs[case], ref_steps = reference_grad(problem, solver, tol)
        looser, _ = reference_grad(problem, solver, 10 * tol)
        ref_line = (
            f"Reference: ode_jax discrete adjoint, {solver}, float64, rtol = atol = {tol:g} "
            f"({ref_steps} steps, {time.perf_counter() - t0:.0f} s with the check); it differs "
            f"from the same at {10 * tol:g} by {rel_err(looser, refs[case]):.1e} (relative max)."
        )
        if case in cases:
            rows, dtmax = compare_methods(
                problem, list(args.methods), refs[case], args.rounds, args.sample_s, cli.log
            )
            sections.append(
                f"### {problem.title}\n\n{markdown_table(rows, METHOD_COLUMNS)}\n\n{ref_line} "
                f"10x run: dtmax = {dtmax:.4g}.\n"
            )
            print(sections[-1], flush=True)
        own = (problem.rtol, problem.atol)
        swept = case in sweep_cases
        rows = reversible_sweep(
            case, problem, refs[case], (jnp.float32, jnp.float64),
            couplings if swept else [0.999], SWEEP_TOLS if swept else [own], cli.log,
        )  # fmt: skip
        sweep_rows += rows if swept else []
        exact_rows += [r for r in rows if r["coupling"] == 0.999 and (r["rtol"], r["atol"]) == own]

    total = time.perf_counter() - t_start
    cmd = " ".join(sys.argv[1:] if argv is None else argv)
    report = (
        "# Exact gradients at O(1) memory: the reversible adjoint\n\n"
        f"Command: `python -m benchmarks.adjoint_study {cmd}`  \n"
        f"Date: {datetime.datetime.now().isoformat(timespec='minutes')}  \n"
        f"Machine: {machine_description(load_start)}  \nTotal run time: {total:.0f} s.\n\n"
        "## 1. Gradient error, memory and time\n\n"
        + NOTES.format(
            max_steps=MAX_STEPS, big=10 * MAX_STEPS, rounds=args.rounds, sample_s=args.sample_s
        )
        + "\n"
        + "\n".join(sections)
    )
    exact_cols = [c for c in SWEEP_COLUMNS if c[0] != "coupling"]
    report += (
        "\n## 2. Exactness: reversible adjoint vs discrete adjoint of the same reversible solve\n\n"
        "Coupling 0.999, each problem's own tolerances; columns as in section 3.\n\n"
        + markdown_table(exact_rows, exact_cols)
        + "\n"
    )
    if sweep_rows:
        report += (
            "\n## 3. Stability of the reconstruction\n\n"
            + SWEEP_NOTES.format(max_steps=SWEEP_MAX_STEPS)
            + "\n"
            + markdown_table(sweep_rows, SWEEP_COLUMNS)
            + "\n"
        )
    train = training_rows(Path(args.training)) if args.training else []
    if train:
        report += (
            "\n## 4. Training: the spiral job under each adjoint\n\n"
            f"Runs in `{args.training}/` (commands in its PROVENANCE.md); eval errors are of the "
            "learned field integrated from y(0) over the whole horizon.\n\n"
            + markdown_table(train, TRAINING_COLUMNS)
            + "\n"
        )
    print(report[report.index("## 2.") :])
    print(f"total {total:.0f} s")
    if args.out:
        Path(args.out).write_text(report)
        cli.log(f"wrote {args.out}")
    return report


if __name__ == "__main__":
    cli.entry(main)
