"""Where compile time goes: trace, lower and XLA compile apart, and the compiled program's size.

    python -m benchmarks.compile_probe --cases mlp,odenet --compiles 5

For every method and case, compiles fresh copies of the forward and the gradient function
(``jax.jit(fn).trace(params)``, ``.lower()``, ``.compile()``, each step timed), interleaving the
methods round by round, and reports medians. Program size comes from the optimised HLO
(``compiled.as_text()``): instructions, fusions, while loops, and the number of times the vector
field's own work appears (its dot products, counted as ``dot``/``convolution`` instructions).
"""

from __future__ import annotations

import dataclasses
import re
import time
import warnings

import jax
import numpy as np

from . import cli
from .measure import round_order
from .methods import JAX_METHODS
from .run import PROBLEMS

STEPS = ("trace", "lower", "compile")


def hlo_counts(text: str) -> dict:
    """Counts of instructions in an optimised HLO module's text."""
    lines = text.splitlines()
    body = [ln.strip() for ln in lines if " = " in ln and not ln.startswith("HloModule")]
    return {
        "instructions": len(body),
        "fusions": sum(1 for ln in body if re.search(r"\bfusion\(", ln)),
        "whiles": sum(1 for ln in body if re.search(r"\bwhile\(", ln)),
        "dots": sum(1 for ln in body if re.search(r"\b(dot|convolution)\(", ln)),
        "computations": sum(1 for ln in lines if ln.rstrip().endswith("{")),
    }


def compile_steps(fn, params) -> tuple[dict, dict]:
    """Seconds of each of trace, lower and compile of a fresh jit of fn, and the HLO counts."""
    out = {}
    t0 = time.perf_counter()
    traced = jax.jit(fn).trace(params)
    out["trace"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    lowered = traced.lower()
    out["lower"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    compiled = lowered.compile()
    out["compile"] = time.perf_counter() - t0
    return out, hlo_counts(compiled.as_text())


@dataclasses.dataclass(frozen=True)
class ABArgs:
    """Flags of an in-process compile A/B (benchmarks.nested_jit, benchmarks.finite_check)."""

    cases: tuple[str, ...] = ("odenet",)  # of mlp, mlp_eqx, odenet, odenet_plain, spiral
    compiles: int = 5  # timed compilations per variant
    quick: bool = False  # small problems (for tests)
    out: str = ""  # write the report here too ('' = print only)

    def __post_init__(self):
        if self.compiles < 1:
            raise cli.UserError(f"--compiles must be >= 1, got {self.compiles}")


def ab_setup(cls, argv, name: str):
    """Parse an A/B script's flags: ``(args, case names)``."""
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    args = cli.parse(cls, argv, name)
    cli.writable(args.out)
    return args, cli.names(args.cases, list(PROBLEMS), "--cases")


def interleaved(variants: dict, compiles: int, log=None) -> dict:
    """Call every ``variants[name]()`` (a fresh compilation returning a dict of seconds and
    counts) ``compiles + 1`` times, interleaved round by round (:func:`round_order`; round 0 is
    a warm-up, not kept). Returns, per name, the medians of the float fields and the other
    fields of the last call."""
    kept = {name: [] for name in variants}
    for r in range(compiles + 1):
        for name in round_order(list(variants), r):
            row = variants[name]()
            if r:
                kept[name].append(row)
        if log:
            log(f"  round {r} done")
    return {
        name: {
            k: float(np.median([x[k] for x in rows])) if isinstance(v, float) else v
            for k, v in rows[-1].items()
        }
        for name, rows in kept.items()
    }


def probe_case(problem, methods, compiles, log) -> list[dict]:
    builds = {m: JAX_METHODS[m](problem, problem.vf) for m in methods}
    times = {(m, kind): {s: [] for s in STEPS} for m in methods for kind in ("fwd", "grad")}
    counts = {}
    for r in range(compiles + 1):  # round 0 is a warm-up (first compiles in a process are slow)
        for m in round_order(methods, r):
            solve = builds[m]
            fns = {
                "fwd": lambda p, solve=solve: solve(p),
                "grad": jax.grad(lambda p, solve=solve: problem.loss(solve(p))),
            }
            for kind, fn in fns.items():
                secs, counts[m, kind] = compile_steps(fn, problem.params)
                if r:
                    for s in STEPS:
                        times[m, kind][s].append(secs[s])
        log(f"  round {r} done")
    rows = []
    for (m, kind), t in times.items():
        med = {s: float(np.median(v)) for s, v in t.items()}
        total = sum(med.values())
        rows.append({"method": m, "kind": kind, **med, "total": total, **counts[m, kind]})
    return rows


def table(rows) -> str:
    cols = ["method", "kind", *STEPS, "total", "instructions", "fusions", "whiles", "dots"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in sorted(rows, key=lambda r: (r["kind"], r["method"])):
        cells = [f"{row[c]:.3f}" if isinstance(row[c], float) else str(row[c]) for c in cols]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


@dataclasses.dataclass(frozen=True)
class Args:
    """Where compile time goes: trace, lower and XLA compile apart, and the program's size.

    List flags take names separated by commas or spaces (``--cases mlp,odenet``).
    """

    cases: tuple[str, ...] = ("mlp", "odenet")  # of mlp, mlp_eqx, odenet, odenet_plain, spiral
    # of ode_jax-discrete, ode_jax-continuous, diffrax-rca, diffrax-backsolve,
    # jax.experimental.ode; all: every one
    methods: tuple[str, ...] = ("ode_jax-continuous", "jax.experimental.ode")
    compiles: int = 5  # timed compilations per function
    quick: bool = False  # small problems (for tests)

    def __post_init__(self):
        if self.compiles < 1:
            raise cli.UserError(f"--compiles must be >= 1, got {self.compiles}")


def main(argv=None):
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    args = cli.parse(Args, argv, "compile_probe")
    cases = cli.names(args.cases, list(PROBLEMS), "--cases")
    methods = cli.names(args.methods, list(JAX_METHODS), "--methods")
    out = []
    for case in cases:
        problem = PROBLEMS[case](quick=args.quick)
        cli.log(f"### {problem.title}")
        rows = probe_case(problem, methods, args.compiles, cli.log)
        text = f"### {problem.title}\n\nSeconds: medians of {args.compiles} compilations.\n\n"
        text += table(rows) + "\n"
        print(text, flush=True)
        out.append(text)
    return "\n".join(out)


if __name__ == "__main__":
    cli.entry(main)
