"""Side-by-side speed/memory benchmark: ode_jax vs diffrax, jax.experimental.ode, torchdiffeq.

Usage (from the repository root)::

    python -m benchmarks.run                       # all cases, ~10 minutes on 2 CPU cores
    python -m benchmarks.run --quick               # small sizes, few repeats, ~1-2 minutes
    python -m benchmarks.run --cases odenet --repeats 9 --out benchmarks/results.md

Everything runs in one process; see benchmarks/measure.py for what each column means.
"""

from __future__ import annotations

import dataclasses
import datetime
import math
import os
import platform
import sys
import time
import warnings

import numpy as np

from . import cli, train_step
from .measure import (
    compile_rounds,
    count_nfes,
    jax_runner,
    jax_unit_costs,
    markdown_table,
    number,
    pick_torch_threads,
    round_order,
    rss_peak_delta_mb,
    torch_runner,
    torch_unit_costs,
)
from .methods import (
    ANCHORS,
    JAX_METHODS,
    TORCH_METHODS,
    float32_on_gpu,
    select_torch_device,
    torch_available,
)
from .problems import PROBLEMS

# Issue targets: ratios of ode_jax's row to the best JAX anchor in the same run.
TARGETS = {"fwd": 1.0, "grad": 0.8, "compile_grad": 1.0, "vs_torch_grad": 1.0, "overhead": 1.2}


@dataclasses.dataclass(frozen=True)
class Args:
    """Side-by-side speed/memory benchmark: ode_jax vs diffrax, jax.experimental.ode, torchdiffeq.

    List flags take names separated by commas or spaces (``--cases mlp,odenet``); the report's
    columns are explained in benchmarks/measure.py.
    """

    # of mlp, mlp_eqx, odenet, odenet_plain, spiral, train (train: benchmarks/train_step.py)
    cases: tuple[str, ...] = ("mlp", "mlp_eqx", "odenet", "odenet_plain", "spiral", "train")
    # of ode_jax-discrete, ode_jax-continuous, diffrax-rca, diffrax-backsolve,
    # jax.experimental.ode, torchdiffeq, torchdiffeq-adjoint; all: every one
    methods: tuple[str, ...] = ("all",)
    repeats: int = 7  # timed rounds per case (max)
    sample_s: float = 0.1  # each timed sample repeats a call back to back for >= this many s
    budget: float = 90.0  # seconds of timing per case (caps repeats)
    compiles: int = 0  # interleaved compilations per JAX method, median reported (0: 3, quick 1)
    quick: bool = False  # small sizes, 3 rounds, 8 s per case
    torch: bool = True  # run torchdiffeq (--no-torch: skip it)
    nfe: bool = True  # count NFEs (--no-nfe: skip, saves compiles)
    # auto: cuda when JAX runs on a GPU and torch sees one, else cpu; or cpu, cuda
    torch_device: str = "auto"
    out: str = "benchmarks/results.md"  # markdown report ('' = none)

    def __post_init__(self):
        if self.repeats < 1 or self.compiles < 0:
            raise cli.UserError("--repeats must be >= 1 and --compiles >= 0 (0: the default)")
        if not self.sample_s >= 0:
            raise cli.UserError(f"--sample-s must be >= 0, got {self.sample_s}")
        if self.torch_device not in ("auto", "cpu", "cuda"):
            raise cli.UserError(
                f"--torch-device must be auto, cpu or cuda, got {self.torch_device!r}"
            )

    def resolved(self) -> Args:
        """``--quick``'s caps applied and the compile count filled in."""
        if not self.quick:
            return dataclasses.replace(self, compiles=self.compiles or 3)
        return dataclasses.replace(
            self,
            repeats=min(self.repeats, 3),
            budget=min(self.budget, 8.0),
            sample_s=min(self.sample_s, 0.01),
            compiles=self.compiles or 1,
        )


def parse_args(argv=None) -> Args:
    return cli.parse(Args, argv, "run").resolved()


def _median_ms(xs):
    return 1e3 * float(np.median(xs)) if xs else float("nan")


def run_case(problem, methods, args, log):
    runners = []
    torch_threads = None
    if any(m in TORCH_METHODS for m in methods):
        torch_threads = pick_torch_threads(problem)
        log(f"  torch threads: {torch_threads}")
    for name in methods:
        log(f"  compiling {name} ...")
        if name in JAX_METHODS:
            runners.append(jax_runner(name, problem, count_nfe=args.nfe))
        else:
            runners.append(torch_runner(name, problem))
    compile_rounds(runners, args.compiles, log)
    # Warm-up, which also sizes each sample: a sample times `calls` back-to-back calls (at least
    # --sample-s seconds of work), so that a call of a few milliseconds is not timed alone right
    # after another library has run (cold caches, other thread pools).
    calls, round_s = {}, 0.0
    for r in runners:
        for kind in ("fwd", "grad"):
            t0 = time.perf_counter()
            getattr(r, kind)()
            once = time.perf_counter() - t0
            calls[r.name, kind] = max(1, math.ceil(args.sample_s / max(once, 1e-9)))
            round_s += calls[r.name, kind] * once
    repeats = int(max(3, min(args.repeats, args.budget // max(round_s, 1e-9))))
    log(f"  timing {repeats} interleaved rounds (~{round_s:.2f} s each) ...")
    for i in range(repeats):
        for r in round_order(runners, i):
            for kind in ("fwd", "grad"):
                n = calls[r.name, kind]
                fn = getattr(r, kind)
                t0 = time.perf_counter()
                for _ in range(n):
                    fn()
                r.times[kind].append((time.perf_counter() - t0) / n)
    for r in runners:
        r.rss_grad_mb = rss_peak_delta_mb(r.grad)
    units = {"jax": jax_unit_costs(problem)}
    if any(r.library == "torch" for r in runners):
        units["torch"] = torch_unit_costs(problem)
    count_nfes(runners)  # last: no callback runs before the timed calls
    return runners, units, repeats, torch_threads


def summarise(runners, units):
    rows = []
    for r in runners:
        t_f, t_vjp = units[r.library]
        fwd, grad = _median_ms(r.times["fwd"]), _median_ms(r.times["grad"])
        # A method that backpropagates through its stored forward graph evaluates nothing
        # backwards but pays one VJP per forward evaluation.
        n_vjp = r.nfe_bwd if r.nfe_bwd > 0 else r.nfe_fwd
        rows.append(
            dict(
                method=r.name,
                fwd=fwd,
                grad=grad,
                compile_fwd=r.compile_fwd_s,
                compile_grad=r.compile_grad_s,
                nfe_fwd=r.nfe_fwd,
                nfe_bwd=r.nfe_bwd,
                temp_grad=r.temp_grad_mb,
                rss_grad=r.rss_grad_mb,
                ovh_fwd=fwd / 1e3 / (r.nfe_fwd * t_f),
                ovh_grad=grad / 1e3 / (r.nfe_fwd * t_f + n_vjp * t_vjp),
            )
        )
    best = {}
    for key in ("fwd", "grad", "compile_grad"):
        vals = [row[key] for row in rows if row["method"] in ANCHORS and np.isfinite(row[key])]
        best[key] = min(vals) if vals else float("nan")
    for row in rows:
        for key in ("fwd", "grad", "compile_grad"):
            row[f"x_{key}"] = row[key] / best[key]
    return rows


COLUMNS = [
    ("method", "method", "{}"),
    ("fwd", "fwd ms", "{:.1f}"),
    ("grad", "grad ms", "{:.1f}"),
    ("x_fwd", "fwd x", "{:.2f}"),
    ("x_grad", "grad x", "{:.2f}"),
    ("compile_fwd", "compile fwd s", "{:.2f}"),
    ("compile_grad", "compile grad s", "{:.2f}"),
    ("x_compile_grad", "compile grad x", "{:.2f}"),
    ("nfe_fwd", "NFE fwd", "{:.0f}"),
    ("nfe_bwd", "NFE bwd", "{:.0f}"),
    ("temp_grad", "XLA temp MB (grad)", "{:.1f}"),
    ("rss_grad", "RSS peak MB (grad)", "{:.1f}"),
    ("ovh_fwd", "overhead fwd", "{:.2f}"),
    ("ovh_grad", "overhead grad", "{:.2f}"),
]


def table(rows) -> str:
    return markdown_table(rows, [(key, head, number(spec)) for key, head, spec in COLUMNS])


def target_check(case, rows) -> list[str]:
    """One line per issue target for each ode_jax row."""
    out = []
    by_name = {r["method"]: r for r in rows}
    torch_row = by_name.get("torchdiffeq")
    for name in ("ode_jax-discrete", "ode_jax-continuous"):
        r = by_name.get(name)
        if r is None:
            continue
        checks = [
            ("fwd / best JAX", r["x_fwd"], TARGETS["fwd"]),
            ("grad / best JAX", r["x_grad"], TARGETS["grad"]),
            ("grad compile / best JAX", r["x_compile_grad"], TARGETS["compile_grad"]),
        ]
        if case in ("odenet", "odenet_plain"):
            if torch_row is not None:
                checks.append(
                    ("grad / torchdiffeq", r["grad"] / torch_row["grad"], TARGETS["vs_torch_grad"])
                )
            checks.append(("overhead fwd", r["ovh_fwd"], TARGETS["overhead"]))
            checks.append(("overhead grad", r["ovh_grad"], TARGETS["overhead"]))
        for label, value, target in checks:
            ok = "ok" if value <= target else "MISSED"
            out.append(f"- {case} {name}: {label} = {value:.2f} (target <= {target}) {ok}")
    return out


def machine_description(load_start, torch_device=None) -> str:
    import jax

    cpu = platform.processor() or "?"
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next(line.split(":", 1)[1].strip() for line in fh if "model name" in line)
    except (OSError, StopIteration):
        pass
    libs = [f"jax {jax.__version__}"]
    for mod in ("jaxlib", "equinox", "diffrax", "torch", "torchdiffeq"):
        try:
            libs.append(f"{mod} {__import__(mod).__version__}")
        except ImportError:
            pass
    device = jax.devices()[0]
    if device.platform != "cpu":
        libs.insert(0, f"JAX device {device.device_kind}")
    if torch_device is not None:
        libs.append(f"torch device {torch_device}")
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    start = ", ".join(f"{x:.1f}" for x in load_start)
    return (
        f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}, JAX backend {jax.default_backend()}; "
        f"{'; '.join(libs)}. Load average (1, 5, 15 min) at the start: {start}; at the end: {load}."
    )


def main(argv=None):
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    args = parse_args(argv)
    t_start = time.perf_counter()
    load_start = os.getloadavg()
    cases = cli.names(args.cases, [*PROBLEMS, "train"], "--cases")
    methods = cli.names(args.methods, [*JAX_METHODS, *TORCH_METHODS], "--methods")
    cli.writable(args.out)
    if not args.torch or not torch_available():
        methods = [m for m in methods if m not in TORCH_METHODS]
    if not methods:
        raise cli.UserError("no method left to run: see --methods and --no-torch")
    gpu = float32_on_gpu()
    torch_device = None
    if any(m in TORCH_METHODS for m in methods):
        try:
            torch_device = select_torch_device(args.torch_device)
        except ValueError as err:
            raise cli.UserError(str(err)) from None

    sections, checks = [], []
    for case in cases:
        if case == "train":  # (d): one ODE-Net training step, its own module
            text, lines, _ = train_step.run_section(
                quick=args.quick,
                methods=methods,
                repeats=args.repeats,
                budget_s=args.budget,
                count_nfe=args.nfe,
                log=cli.log,
            )
            print(text, flush=True)
            sections.append(text)
            checks += lines
            continue
        problem = PROBLEMS[case](quick=args.quick)
        cli.log(f"{problem.title}")
        t0 = time.perf_counter()
        runners, units, repeats, torch_threads = run_case(problem, methods, args, cli.log)
        rows = summarise(runners, units)
        unit_lines = ", ".join(
            f"{lib}: f {1e6 * f:.1f} µs, vjp {1e6 * v:.1f} µs" for lib, (f, v) in units.items()
        )
        text = (
            f"### {problem.title}\n\n{table(rows)}\n\n"
            f"Medians of {repeats} interleaved rounds, each sample >= {args.sample_s:g} s of "
            f"back-to-back calls (compile: {args.compiles}); "
            f"one vector-field evaluation ({unit_lines}); "
            + (f"torch threads: {torch_threads}; " if torch_threads else "")
            + f"case took {time.perf_counter() - t0:.0f} s.\n"
        )
        print(text, flush=True)
        sections.append(text)
        checks += target_check(case, rows)

    total = time.perf_counter() - t_start
    header = (
        "# ode_jax benchmarks\n\n"
        f"Command: `python -m benchmarks.run {' '.join(sys.argv[1:] if argv is None else argv)}`"
        f"  \nDate: {datetime.datetime.now().isoformat(timespec='minutes')}  \n"
        f"Machine: {machine_description(load_start, torch_device)}  \n"
        f"Total run time: {total:.0f} s.\n\n"
        "Ratios (x) are to the best JAX anchor (diffrax RecursiveCheckpointAdjoint, diffrax "
        "BacksolveAdjoint, jax.experimental.ode) in the same run. NFE counts vector-field "
        "executions (a VJP counts once). XLA temp = compiled memory_analysis() temp size; RSS "
        "peak = growth of the process's peak RSS over one gradient call (the only memory figure "
        "for torch). Overhead = wall / (NFE x one evaluation), gradient: NFE_fwd x f + "
        "NFE_bwd x vjp (NFE_fwd VJPs for direct backprop). Compile = lower + compile.\n"
        + (
            "On the GPU: float32 matmuls and convolutions in every library (JAX precision "
            "'highest', torch TF32 off); RSS peak is host memory, not device memory.\n"
            if gpu
            else ""
        )
    )
    report = header + "\n" + "\n".join(sections)
    if checks:
        report += "\n### Issue targets\n\n" + "\n".join(checks) + "\n"
        print("\n".join(checks))
    print(f"\ntotal {total:.0f} s")
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(report)
        cli.log(f"wrote {args.out}")
    return report


if __name__ == "__main__":
    cli.entry(main)
