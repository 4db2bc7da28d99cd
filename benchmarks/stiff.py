"""Stiff problems side by side: ode_jax's implicit solvers against diffrax Kvaerno5 and scipy.

    python -m benchmarks.stiff --out benchmarks/stiff.md

For Robertson, van der Pol (mu = 1000) and HIRES, at each problem's usual tolerance: the error
at the final time against a scipy Radau reference at 1e-12 (max over components of
|y - ref| / (atol + rtol |ref|), so 1 means "at the requested tolerance"), steps, Jacobian
evaluations, the wall time of one solve after compile (ours also at a tenth of the tolerance,
to compare at equal error) (median of repeats) and the compile time.
scipy (Radau, BDF, LSODA, with the analytic Jacobian) is a non-JAX reference: pure-Python
stepping, so its times are per solve in the interpreter.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

import ode_jax

from . import cli
from .measure import markdown_table, number
from .stiff_problems import PROBLEMS

jax.config.update("jax_enable_x64", True)

# (solver, tolerance scale): also at a tenth of the tolerance, to compare at equal error.
OURS = (("kvaerno5", 1.0), ("rodas5", 1.0), ("kvaerno3", 1.0), ("kvaerno5", 0.1), ("rodas5", 0.1))


def _median_time(fn, repeats):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def _compile_and_time(solve, y0, repeats):
    """(solution, median wall seconds of one solve after compile, compile seconds)."""
    t0 = time.perf_counter()
    fn = jax.jit(solve).lower(y0).compile()
    compile_s = time.perf_counter() - t0
    return fn(y0), _median_time(lambda: fn(y0).ys, repeats), compile_s


def _err(y, p):
    ref = np.asarray(p.reference)
    return float(np.max(np.abs(np.asarray(y) - ref) / (p.atol + p.rtol * np.abs(ref))))


def ode_jax_row(p, name, repeats, scale=1.0):
    y0, ts = jnp.asarray(p.y0), jnp.asarray([0.0, p.t1])
    rtol, atol = p.rtol * scale, p.atol * scale

    def solve(y0):
        return ode_jax.odeint(
            p.f, y0, ts, p.args, solver=name, rtol=rtol, atol=atol, max_steps=50000,
            throw=False,
        )  # fmt: skip

    sol, wall, compile_s = _compile_and_time(solve, y0, repeats)
    st = {k: int(v) for k, v in sol.stats.items()}
    ok = int(sol.result) == 0
    return dict(
        method=f"ode_jax {name}" + ("" if scale == 1.0 else f" (tol x {scale:g})"),
        err=_err(sol.ys[-1], p) if ok else float("nan"),
        steps=st["num_accepted"], rejected=st["num_rejected"], nfe=st["nfe"],
        jac=st.get("num_jacobians", 0), wall_ms=1e3 * wall, compile_s=compile_s,
    )  # fmt: skip


def diffrax_row(p, repeats):
    import diffrax

    y0 = jnp.asarray(p.y0)

    def solve(y0):
        return diffrax.diffeqsolve(
            diffrax.ODETerm(p.f), diffrax.Kvaerno5(), 0.0, p.t1, None, y0, p.args,
            stepsize_controller=diffrax.PIDController(rtol=p.rtol, atol=p.atol),
            max_steps=50000, throw=False,
        )  # fmt: skip

    sol, wall, compile_s = _compile_and_time(solve, y0, repeats)
    return dict(
        method="diffrax Kvaerno5", err=_err(sol.ys[-1], p),
        steps=int(sol.stats["num_accepted_steps"]), rejected=int(sol.stats["num_rejected_steps"]),
        nfe=-1, jac=-1, wall_ms=1e3 * wall, compile_s=compile_s,
    )  # fmt: skip


def scipy_row(p, method, repeats):
    from scipy.integrate import solve_ivp

    kw = dict(method=method, rtol=p.rtol, atol=p.atol)
    if p.jac_np is not None:
        kw["jac"] = p.jac_np
    times, r = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        r = solve_ivp(p.f_np, (0.0, p.t1), list(p.y0), **kw)
        times.append(time.perf_counter() - t0)
    return dict(
        method=f"scipy {method}", err=_err(r.y[:, -1], p), steps=len(r.t) - 1, rejected=-1,
        nfe=int(r.nfev), jac=int(r.njev), wall_ms=1e3 * float(np.median(times)), compile_s=0.0,
    )  # fmt: skip


def _count(v) -> str:
    return "–" if v < 0 else str(v)  # -1: the method does not report it


TABLE_COLUMNS = (
    ("method", "method", str),
    ("err", "error (tol units)", number("{:.2f}")),
    ("steps", "steps", str),
    ("rejected", "rejected", _count),
    ("nfe", "NFE", _count),
    ("jac", "Jacobians", _count),
    ("wall_ms", "wall ms", number("{:.2f}")),
    ("compile_s", "compile s", number("{:.2f}")),
)


def table(rows):
    return markdown_table(rows, TABLE_COLUMNS)


@dataclasses.dataclass(frozen=True)
class Args:
    """Stiff problems side by side: ode_jax's implicit solvers against diffrax and scipy.

    ``--problems`` takes names separated by commas or spaces.
    """

    out: str = ""  # write the markdown report here ('' = none)
    repeats: int = 5  # timed repeats per method
    problems: tuple[str, ...] = tuple(PROBLEMS)  # of robertson, van_der_pol, hires

    def __post_init__(self):
        if self.repeats < 1:
            raise cli.UserError(f"--repeats must be >= 1, got {self.repeats}")


def main(argv=None):
    args = cli.parse(Args, argv, "stiff")
    problems = cli.names(args.problems, list(PROBLEMS), "--problems")
    cli.writable(args.out)
    command = " ".join(sys.argv[1:] if argv is None else argv)
    parts = [
        "# Stiff problems: ode_jax vs diffrax Kvaerno5 vs scipy",
        "",
        f"Command: `python -m benchmarks.stiff {command}`  ",
        f"Date: {time.strftime('%Y-%m-%dT%H:%M')}  ",
        f"Machine: {platform.processor() or platform.machine()}, JAX {jax.__version__} on "
        f"{jax.default_backend()}; load average at start "
        f"{tuple(round(x, 1) for x in os.getloadavg())}.",
        "",
    ]
    for name in problems:
        p = PROBLEMS[name]
        rows = [ode_jax_row(p, m, args.repeats, scale) for m, scale in OURS]
        rows.append(diffrax_row(p, args.repeats))
        rows += [scipy_row(p, m, max(1, args.repeats // 2)) for m in ("Radau", "BDF", "LSODA")]
        parts += [f"## {name} on [0, {p.t1}], rtol {p.rtol}, atol {p.atol}", "", table(rows), ""]
        print(parts[-3], "\n", parts[-2], flush=True)
    report = "\n".join(parts)
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(report + "\n")
    return report


if __name__ == "__main__":
    cli.entry(main)
