"""What the continuous adjoint's seminorm costs in gradient accuracy, and saves in evaluations.

    python -m benchmarks.seminorm_study --out benchmarks/seminorm_study.md   # ~5 min

``ContinuousAdjoint(seminorm=True)`` leaves the parameter adjoint out of the backward solve's
error norm (Kidger et al. 2021). ``benchmarks.controller_study`` counts the evaluations it saves
on (a2), (b2) and ReLU MLPs; here each gradient (float32, dopri5, the problem's tolerances, as
``benchmarks.run``) is also compared with a float64 reference: ode_jax's discrete adjoint with
dopri5 at rtol = atol = 1e-9 (dopri5 rather than dopri8: at the ReLU fields' kinks a
higher order buys nothing).
Error: max |g - ref| / max |ref| over all parameters. The discrete adjoint's float32 gradient
at the problem's tolerance is the baseline: the gradient of the computed solution.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import sys

import jax
import jax.numpy as jnp

import ode_jax

from . import cli
from .adjoint_study import cast, flat, rel_err
from .controller_study import relu_mlp
from .measure import count_calls
from .methods import counting, ode_jax_method

CASES = ("mlp_eqx", "odenet", "odenet_plain", "relu0", "relu1", "relu2")
METHODS = {
    "continuous": ode_jax.ContinuousAdjoint(),
    "continuous, seminorm": ode_jax.ContinuousAdjoint(seminorm=True),
    "discrete": ode_jax.DiscreteAdjoint(),
}
REFERENCE_TOL = 1e-9


@dataclasses.dataclass(frozen=True)
class Flags:
    cases: tuple[str, ...] = ("all",)
    """of mlp_eqx, odenet, odenet_plain (benchmarks.run's), relu0-relu2 (controller_study's
    ReLU MLPs at rtol = atol = 1e-3), or 'all'"""
    quick: bool = False
    """smaller benchmark problems (a test run)"""
    out: str = ""
    """write the markdown report here too ('' = print only)"""


def problem(case: str, quick: bool):
    if case.startswith("relu"):
        return relu_mlp(int(case[4:]), 1e-3)
    from .run import PROBLEMS

    return PROBLEMS[case](quick=quick)


def gradient(p, adjoint, vf=None):
    """The jitted gradient of the problem's loss w.r.t. its parameters (``vf``: the field to
    solve, default the problem's)."""
    solve = ode_jax_method(adjoint)(p, vf or p.vf)
    return jax.jit(jax.grad(lambda params: p.loss(solve(params)))), jax.jit(solve)


def rows_for(case: str, quick: bool) -> list[dict]:
    p = problem(case, quick)
    with jax.enable_x64(True):
        p64 = dataclasses.replace(cast(p, jnp.float64), rtol=REFERENCE_TOL, atol=REFERENCE_TOL)
        ref = flat(gradient(p64, ode_jax.DiscreteAdjoint())[0](p64.params))
    rows = []
    for name, adjoint in METHODS.items():
        counter = [0]
        grad, fwd = gradient(p, adjoint, counting(p.vf, counter))
        kept = []  # the counted call's gradient

        def run_grad(grad=grad, kept=kept):
            kept.append(grad(p.params))
            return kept[-1]

        n_fwd, n_bwd = count_calls(counter, functools.partial(fwd, p.params), run_grad)
        err = rel_err(flat(kept[0]), ref)
        rows.append(dict(case=case, method=name, err=err, nfe_fwd=n_fwd, nfe_bwd=n_bwd))
        cli.log(f"  {case} {name}: {rows[-1]}")
    return rows


def main(argv=None) -> str:
    flags = cli.parse(Flags, argv, "seminorm_study")
    cases = cli.names(flags.cases, CASES, "--cases")
    cli.writable(flags.out)
    lines = [
        "# The continuous adjoint's seminorm: gradient error and evaluations",
        "",
        f"Command: `python -m benchmarks.seminorm_study {' '.join(argv or sys.argv[1:])}`  ",
        f"Date: {datetime.datetime.now().isoformat(timespec='minutes')}  ",
        f"jax {jax.__version__}. Float32, dopri5 at each problem's tolerances; error: max |g - "
        f"ref| / max |ref| against ode_jax's discrete adjoint in float64 at rtol = atol = "
        f"{REFERENCE_TOL:g}; NFE: forward + backward evaluations of the field.",
        "",
        "| case | method | gradient error | NFE fwd | NFE bwd |",
        "|---|---|---:|---:|---:|",
    ]
    rows = [r for case in cases for r in rows_for(case, flags.quick)]
    cells = ("case", "method", "err", "nfe_fwd", "nfe_bwd")
    fmt = {"err": "{:.2e}"}
    lines += ["| " + " | ".join(fmt.get(c, "{}").format(r[c]) for c in cells) + " |" for r in rows]
    return cli.publish("\n".join(lines) + "\n", flags.out)


if __name__ == "__main__":
    cli.entry(main)
