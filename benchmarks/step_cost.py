"""What keeping a step's stage intermediates buys the discrete adjoint, and what it costs.

    python -m benchmarks.step_cost --out benchmarks/step_cost.md

``DiscreteAdjoint(keep_stages=...)`` decides how the backward pass pulls cotangents back
through an accepted step: one ``jax.vjp`` of the whole step (True: each stage evaluated once,
its intermediates alive during the step's pull-back) or the stages recomputed and walked back
one VJP at a time (False: f runs twice per stage, one copy of f's VJP in the program). The
default (None, the same as True) keeps them. A third row takes keep_stages=False with dopri5's
stages in a loop (``ode_jax.SOLVERS["dopri5"].looped()``) in the forward solve too: one copy
of f in every loop of the program, as jax.experimental.ode has it. For
each case this reports, per setting, the gradient's time, its compile time, the compiled
program's temporary memory and how many times the vector field runs in the backward pass (a
callback in f), next to diffrax's RecursiveCheckpointAdjoint (the issue's memory bound) and
jax.experimental.ode, all measured in the same process (interleaved rounds, medians).
"""

from __future__ import annotations

import dataclasses

import ode_jax

from . import cli
from .measure import compile_rounds, count_nfes, interleaved_medians, jax_runner
from .methods import ode_jax_method
from .problems import PROBLEMS

# name: (keep_stages, solver). The looped layout (one copy of f in every loop, as
# jax.experimental.ode has it) asks what stage unrolling costs in compile time.
SETTINGS = {
    "discrete default (keeps stages)": (None, "dopri5"),
    "discrete keep_stages=False": (False, "dopri5"),
    "discrete keep_stages=False, looped stages": (False, ode_jax.SOLVERS["dopri5"].looped()),
}
ANCHORS = ("diffrax-rca", "jax.experimental.ode")


@dataclasses.dataclass(frozen=True)
class Flags:
    cases: tuple[str, ...] = ("mlp", "odenet")
    """benchmark cases (names as in benchmarks.run: mlp, mlp_eqx, odenet, odenet_plain, spiral)"""
    rounds: int = 5
    """interleaved timing rounds; medians are reported"""
    compiles: int = 3
    """compilations per method (fresh copies, interleaved); the median is reported"""
    quick: bool = False
    """the cases' small sizes, one round and one compile (a smoke test, not a measurement)"""
    out: str = ""
    """write the markdown report here too ('' = print only)"""


def runners(problem) -> list:
    """The settings (keep_stages, stage layout) and the two anchors, compiled, with f
    counted."""
    out = []
    for name, (keep, solver) in SETTINGS.items():
        build = ode_jax_method(ode_jax.DiscreteAdjoint(keep_stages=keep), solver=solver)
        out.append(jax_runner(name, problem, build=build))
        cli.log(f"  compiled {name}")
    for name in ANCHORS:
        out.append(jax_runner(name, problem))
        cli.log(f"  compiled {name}")
    return out


def measure_case(problem, rounds: int, compiles: int) -> list[dict]:
    rs = runners(problem)
    compile_rounds(rs, compiles, cli.log)
    grad_s = interleaved_medians({r.name: r.grad for r in rs}, rounds)
    count_nfes(rs)  # after the timing: no callback runs before the timed calls
    ref = grad_s["jax.experimental.ode"]
    return [
        dict(
            method=r.name,
            grad_ms=1e3 * grad_s[r.name],
            x_jeo=grad_s[r.name] / ref,
            compile_s=r.compile_grad_s,
            temp_mb=r.temp_grad_mb,
            f_fwd=r.nfe_fwd,
            f_bwd=r.nfe_bwd,
        )
        for r in rs
    ]


def table(rows: list[dict]) -> str:
    head = (
        "| method | grad ms | x jax.experimental.ode | compile grad s | XLA temp MB (grad) "
        "| f runs fwd | f runs bwd |\n|---|---:|---:|---:|---:|---:|---:|"
    )
    body = [
        f"| {r['method']} | {r['grad_ms']:.1f} | {r['x_jeo']:.2f} | {r['compile_s']:.2f} "
        f"| {r['temp_mb']:.1f} | {r['f_fwd']:.0f} | {r['f_bwd']:.0f} |"
        for r in rows
    ]
    return "\n".join([head, *body])


def main(argv=None) -> str:
    flags = cli.parse(Flags, argv, "step_cost")
    cases = cli.names(flags.cases, list(PROBLEMS), "--cases")
    cli.writable(flags.out)
    rounds, compiles = (1, 1) if flags.quick else (flags.rounds, flags.compiles)
    parts = [
        "The discrete adjoint's `keep_stages` settings and stage layouts on the benchmark "
        f"cases (float32, dopri5); medians of {rounds} interleaved rounds (gradient) and "
        f"{compiles} compilations. f runs: executions of the vector field (a callback in f) "
        "in the forward solve and in the backward pass of one gradient; a VJP's forward part "
        "is one run, its transpose none."
    ]
    for case in cases:
        problem = PROBLEMS[case](quick=flags.quick)
        cli.log(f"{problem.title}")
        rows = measure_case(problem, rounds, compiles)
        parts.append(f"### {problem.title}\n\n{table(rows)}")
    return cli.publish("\n\n".join(parts) + "\n", flags.out)


if __name__ == "__main__":
    cli.entry(main)
