"""The discrete gradient's compile time with and without the nested jit around f in
``RungeKutta.linearize_step`` (d2e7dbe), in one process.

    python -m benchmarks.nested_jit --cases odenet --compiles 5

The kept step's ``jax.vjp`` calls f through ``jax.jit``, so JAX traces f and its
linearisation once for all stages. Without it (f called directly, as before d2e7dbe) each
stage traces them again. XLA inlines the calls either way: the optimised program is the same
size. Both variants are compiled fresh, interleaved round by round (round 0 a warm-up), and
the medians of trace and of trace + lower + compile are reported with the program's
instruction count (:func:`benchmarks.compile_probe.compile_steps`).
"""

from __future__ import annotations

import dataclasses
import functools

import jax

import ode_jax._runge_kutta as rk

from . import cli
from .compile_probe import ABArgs, ab_setup, compile_steps, interleaved
from .methods import JAX_METHODS
from .run import PROBLEMS

VARIANTS = ("nested jit (default)", "f called per stage")


class _NoJit:
    """Stands in for the ``jax`` module inside ``ode_jax._runge_kutta``: ``jit`` is the
    identity, everything else is jax's own."""

    def __getattr__(self, name):
        return (lambda fn: fn) if name == "jit" else getattr(jax, name)


def _compile(problem, variant: str) -> dict:
    rk.jax = jax if variant == VARIANTS[0] else _NoJit()
    try:
        solve = JAX_METHODS["ode_jax-discrete"](problem, problem.vf)
        secs, counts = compile_steps(jax.grad(lambda p: problem.loss(solve(p))), problem.params)
    finally:
        rk.jax = jax
    return {"trace": secs["trace"], "total": sum(secs.values()), **counts}


@dataclasses.dataclass(frozen=True)
class Args(ABArgs):
    """The discrete gradient's compile with and without the nested jit around f."""


def main(argv=None) -> str:
    args, cases = ab_setup(Args, argv, "nested_jit")
    lines = [
        f"Discrete gradient (dopri5), medians of {args.compiles} fresh compilations per "
        "variant, interleaved; seconds.\n",
        "| case | variant | trace s | trace + lower + compile s | HLO instructions |",
        "|---|---|---:|---:|---:|",
    ]
    for case in cases:
        problem = PROBLEMS[case](quick=args.quick)
        variants = {v: functools.partial(_compile, problem, v) for v in VARIANTS}
        medians = interleaved(
            variants, args.compiles, lambda s, case=case: cli.log(f"  {case}:{s}")
        )
        for v, row in medians.items():
            lines.append(
                f"| {case} | {v} | {row['trace']:.3f} | {row['total']:.3f} | "
                f"{row['instructions']} |"
            )
    return cli.publish("\n".join(lines) + "\n", args.out)


if __name__ == "__main__":
    cli.entry(main)
