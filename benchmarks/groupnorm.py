"""GroupNorm on the CPU: how its reductions are written decides the ODE-Net block's speed.

    python -m benchmarks.groupnorm --out benchmarks/groupnorm.md

A channels-last GroupNorm can take its statistics with one reduction over the
``(N, H*W, groups, C / groups)`` view (the direct way, :class:`benchmarks.problems.GroupNormNHWC`)
or in two stages, per channel over the spatial axes and then per group, normalising per
channel (``ode_jax.nn.GroupNorm``). Both compute the same function; on XLA:CPU the first is
several times slower. Times one evaluation and one VJP inside a compiled loop (as the solvers
run them; :func:`benchmarks.measure.jax_unit_costs`), of the norm alone (no affine parameters)
and of benchmark (b)'s field with either norm, and torch's (b) field for reference.
"""

from __future__ import annotations

import dataclasses

import equinox as eqx
import jax

from . import cli
from .measure import jax_unit_costs, pick_torch_threads, torch_unit_costs
from .methods import torch_available
from .problems import GroupNormNHWC, make_odenet

DIRECT, TWO_STAGE = "one reduction (direct)", "two stages (ode_jax.nn)"


@dataclasses.dataclass(frozen=True)
class Flags:
    quick: bool = False
    """tiny sizes (a smoke test of the script, not a measurement)"""
    torch: bool = True
    """time torch's (b) field too (if torch is installed)"""
    out: str = ""
    """write the markdown table here too ('' = print only)"""


def _norm_problem(problem, norm):
    """The norm alone as a 'field' on (b)'s state: y' = norm(y)."""
    return dataclasses.replace(problem, vf=lambda t, y, n: n(y), params=norm)


def _with_direct_norms(problem):
    """(b)'s field with each library GroupNorm swapped for the direct one (no affine)."""
    func = problem.params
    groups = func.norm1.groups
    return dataclasses.replace(
        problem,
        params=eqx.tree_at(
            lambda f: (f.norm1, f.norm2, f.norm3), func, (GroupNormNHWC(groups),) * 3
        ),
    )


def measure(problem, flags: Flags) -> list[dict]:
    """Rows of the table for benchmark (b)'s ``problem``."""
    import ode_jax.nn as onn

    channels = problem.y0.shape[-1]
    groups = problem.params.norm1.groups
    cases = [
        ("GroupNorm alone", DIRECT, _norm_problem(problem, GroupNormNHWC(groups))),
        (
            "GroupNorm alone",
            TWO_STAGE,
            _norm_problem(problem, onn.GroupNorm(groups, channels, affine=False)),
        ),
        ("(b) field", DIRECT, _with_direct_norms(problem)),
        ("(b) field", TWO_STAGE, problem),
    ]
    rows = []
    for what, form, p in cases:
        f_s, vjp_s = jax_unit_costs(p)
        rows.append(dict(what=what, form=form, f_ms=1e3 * f_s, vjp_ms=1e3 * vjp_s))
    if flags.torch and torch_available():
        threads = pick_torch_threads(problem)
        f_s, vjp_s = torch_unit_costs(problem)
        form = f"torch.nn.GroupNorm ({threads} thread{'s' * (threads > 1)})"
        rows.append(dict(what="(b) field", form=form, f_ms=1e3 * f_s, vjp_ms=1e3 * vjp_s))
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| what | GroupNorm written as | f ms | VJP ms |", "|---|---|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['what']} | {r['form']} | {r['f_ms']:.2f} | {r['vjp_ms']:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> str:
    flags = cli.parse(Flags, argv, "groupnorm")
    cli.writable(flags.out)
    problem = make_odenet(quick=flags.quick)
    shape = "x".join(str(d) for d in problem.y0.shape)
    text = (
        f"One evaluation and one VJP inside a compiled loop, float32, state {shape} (NHWC), "
        f"JAX backend {jax.default_backend()}; the VJP includes the forward pass it needs.\n\n"
        + table(measure(problem, flags))
    )
    return cli.publish(text, flags.out)


if __name__ == "__main__":
    cli.entry(main)
