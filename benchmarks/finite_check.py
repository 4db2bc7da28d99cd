"""Compile time of the solves with their finiteness checks written as float reductions (the
default since this script's commit), as boolean reductions (before), and without the input
check, in one process.

    python -m benchmarks.finite_check --cases mlp,odenet --compiles 5

``odeint`` blames a failed solve on a non-finite ``y0`` or ``args`` (the error message names
the argument), the stepping loop checks the new state of fixed-step methods, and the stiff
solvers check their LU factors and states. Written as ``jnp.all(jnp.isfinite(x))``, each check
is a boolean reduction, which XLA:CPU decomposes into several kernels and compiles slowly;
``ode_jax._solver.all_finite`` sums ``|x| * 0`` instead (NaN exactly where x is not finite).
Variants (modules patched for the duration of one compilation):

* ``float reductions (default)``: the library as it is;
* ``boolean reductions (before)``: ``all_finite`` as ``jnp.all(jnp.isfinite(...))``, leaf by
  leaf or over the concatenated leaves, as the code had it;
* ``no input check``: no blame of y0/args at all (a floor: what the check costs in all).

jax.experimental.ode's forward and gradient are compiled in the same rounds for scale. Each
function is compiled fresh (trace + lower + compile), rounds interleaved, medians reported
(:func:`benchmarks.compile_probe.interleaved`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools

import jax
import jax.numpy as jnp

import ode_jax._implicit
import ode_jax._loop
import ode_jax._odeint
import ode_jax._solver

from . import cli
from .compile_probe import ABArgs, ab_setup, compile_steps, interleaved
from .methods import JAX_METHODS
from .run import PROBLEMS

VARIANTS = ("float reductions (default)", "boolean reductions (before)", "no input check")
FUNCTIONS = ("forward", "continuous gradient", "discrete gradient")
JEO = "jax.experimental.ode"
_PATCHED = (ode_jax._odeint, ode_jax._loop, ode_jax._implicit)


def boolean_all_finite(tree, concatenate: bool = False):
    """The checks as they were: boolean reductions, per leaf or over the joined leaves."""
    leaves = [x for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
    if not leaves:
        return jnp.asarray(True)
    if concatenate:
        return jnp.all(jnp.isfinite(jnp.concatenate([jnp.ravel(jnp.abs(x)) for x in leaves])))
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


@contextlib.contextmanager
def variant(name: str):
    saved = [m.all_finite for m in _PATCHED], ode_jax._odeint._blame_input
    try:
        if name == VARIANTS[1]:
            for m in _PATCHED:
                m.all_finite = boolean_all_finite
        elif name == VARIANTS[2]:
            ode_jax._odeint._blame_input = lambda result, y0, args: result
        yield
    finally:
        for m, fn in zip(_PATCHED, saved[0]):
            m.all_finite = fn
        ode_jax._odeint._blame_input = saved[1]


def _compile(problem, what: str, name: str) -> dict:
    """One fresh compilation of ``what`` (one of FUNCTIONS) under variant ``name``, or of
    jax.experimental.ode's forward or gradient when ``name`` is JEO."""
    if name == JEO:
        method, patched = JEO, contextlib.nullcontext()
    else:
        method = "ode_jax-discrete" if what.startswith("discrete") else "ode_jax-continuous"
        patched = variant(name)
    solve = JAX_METHODS[method](problem, problem.vf)
    fn = solve if what == "forward" else jax.grad(lambda p: problem.loss(solve(p)))
    with patched:
        secs, counts = compile_steps(fn, problem.params)
    return {"total": sum(secs.values()), **counts}


def _reduction(form: str, x) -> dict:
    """One fresh compilation of the check alone on ``x``, as ``form``."""
    if form == "float":
        fn = lambda v: ~ode_jax._solver.all_finite(v)  # noqa: E731
    else:
        fn = lambda v: ~boolean_all_finite(v)  # noqa: E731
    secs, counts = compile_steps(fn, x)
    return {"total": sum(secs.values()), **counts}


def reductions(compiles: int) -> list[str]:
    """The check alone on a (256, 32) float32 array (benchmark (a)'s state), both forms."""
    x = jnp.ones((256, 32), jnp.float32)
    forms = {"float sum of abs(x) * 0": "float", "jnp.all(jnp.isfinite(x))": "boolean"}
    fns = {name: functools.partial(_reduction, form, x) for name, form in forms.items()}
    medians = interleaved(fns, compiles)
    lines = [
        f"The check alone, on a (256, 32) float32 array: medians of {compiles} fresh "
        "compilations per form, interleaved.\n",
        "| check | compile ms | HLO instructions | fusions |",
        "|---|---:|---:|---:|",
    ]
    for name, row in medians.items():
        lines.append(
            f"| {name} | {1e3 * row['total']:.1f} | {row['instructions']} | {row['fusions']} |"
        )
    return lines


@dataclasses.dataclass(frozen=True)
class Args(ABArgs):
    """Compile time with the finiteness checks as float or boolean reductions."""

    cases: tuple[str, ...] = ("mlp", "odenet")  # of mlp, mlp_eqx, odenet, odenet_plain, spiral
    reductions_only: bool = False  # only the check alone, on one array (no solves)


def main(argv=None) -> str:
    args, cases = ab_setup(Args, argv, "finite_check")
    if args.reductions_only:
        return cli.publish("\n".join(reductions(args.compiles)) + "\n", args.out)
    lines = [
        f"dopri5, float32; trace + lower + compile, medians of {args.compiles} fresh "
        "compilations per variant, interleaved; seconds. x jeo: against jax.experimental.ode's "
        "forward or gradient compiled in the same process.\n",
        "| case | function | variant | compile s | x jeo | HLO instructions | fusions |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for case in cases:
        problem = PROBLEMS[case](quick=args.quick)
        for what in FUNCTIONS:
            # jax.experimental.ode's gradient is compiled with the continuous one only; the
            # discrete rows are scaled by that.
            names = VARIANTS if what == "discrete gradient" else (*VARIANTS, JEO)
            fns = {n: functools.partial(_compile, problem, what, n) for n in names}
            log = functools.partial(cli.log, f"  {case} {what}:")
            medians = interleaved(fns, args.compiles, log)
            if JEO in medians:
                ref = medians[JEO]["total"]
            for n, row in medians.items():
                label = "gradient" if n == JEO and what != "forward" else what
                lines.append(
                    f"| {case} | {label} | {n} | {row['total']:.3f} | {row['total'] / ref:.2f} "
                    f"| {row['instructions']} | {row['fusions']} |"
                )
    return cli.publish("\n".join(lines) + "\n", args.out)


if __name__ == "__main__":
    cli.entry(main)
