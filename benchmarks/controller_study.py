"""Step-size controllers compared: evaluations, rejections and the error they reach.

    python -m benchmarks.controller_study --out benchmarks/controller_study.md

Every controller solves the same problems (evaluation counts are deterministic: no timing, so
the run may share the machine):

* classic nonstiff test problems in float64 (Hairer, Norsett & Wanner's Arenstorf orbit and
  Brusselator, Lotka-Volterra, van der Pol at mu = 1, Lorenz, a damped linear system, the
  logistic equation, the benchmark's cubic spiral), end state only, at several tolerances,
  with dopri5 and tsit5. The error is the largest component of |y(t1) - ref| / (atol + rtol
  |ref|), ref from dopri8 at rtol 1e-13: global errors in units of the local tolerance;
* the speed benchmark's problems as it runs them (float32, dopri5, ``benchmarks.run``'s
  cases): the forward solve's evaluations and the continuous adjoint's backward ones, counted
  by a callback in the field as ``benchmarks.run`` counts them;
* ReLU MLPs (8 -> 32 -> 32 -> 8, ``eqx.nn.MLP``, three seeds) on a batch of 64 states over
  [0, 1], loss sum(y(1)**2), float32, dopri5: forward and continuous backward evaluations.
  Their error jumps where a unit switches, which step control cannot foresee.

The controllers (the first is the library's default):

* ``default``: ``PIDController()``: in forward solves ``PI 0.2/1`` below, in the continuous
  adjoint's backward solves the integral controller; in both, no step growth on the step
  accepted right after a rejection (Hairer's codes);
* ``integral``: ``PIDController(pcoeff=0.0)``, the integral controller (with the hold) in
  every solve, the default before 2026-12-01;
* ``PI 0.2/1``: ``PIDController(pcoeff=0.2)``, the integral controller damped by Hairer's
  beta = 0.04 (err^-0.24 err_prev^0.04; where the error is steady, the same steps), in
  every solve (forward solves: the same steps as the default);
* ``no hold``: the integral controller without the hold (diffrax's default);
* ``never shrink``: jax.experimental.ode's rule: the integral controller, no hold, and an
  accepted step never shrinks the next one (its factor is at least 1);
* ``PI 0.2/0.65``: ``PIDController(pcoeff=0.2, icoeff=0.65)``, Hairer's stabilised
  controller as DOPRI5 has it (err^-0.17 err_prev^0.04);
* ``PI 0.3/0.4`` and ``PI 0.4/0.3``: PI controllers suggested for neural ODEs;
* and, in the neural ODE tables, ``default, seminorm``: the default controller with
  ``ContinuousAdjoint(seminorm=True)`` (Kidger et al. 2021: the backward error norm leaves
  the parameter adjoint out).
"""

from __future__ import annotations

import dataclasses
import datetime
import math
import platform
import sys

import jax
import jax.numpy as jnp
import numpy as np

import ode_jax
from ode_jax import PIDController

from . import cli
from .measure import count_solve
from .methods import ode_jax_method

_FACTOR = PIDController.factor


@dataclasses.dataclass(frozen=True)
class NoHold(PIDController):
    """The integral controller without the hold after a rejection."""

    def factor(self, err, prev_err, accept, order, prev_rejected=False, last=None):
        return _FACTOR(self, err, prev_err, accept, order, False, last)


@dataclasses.dataclass(frozen=True)
class NeverShrink(PIDController):
    """jax.experimental.ode's rule: the integral controller, no hold, and an accepted step's
    factor is at least 1."""

    def factor(self, err, prev_err, accept, order, prev_rejected=False, last=None):
        factor = _FACTOR(self, err, prev_err, accept, order, False, last)
        return jnp.where(accept & jnp.isfinite(err), jnp.maximum(factor, 1.0), factor)


CONTROLLERS = {
    "default": PIDController(),
    "integral": PIDController(pcoeff=0.0),
    "PI 0.2/1": PIDController(pcoeff=0.2),
    "no hold": NoHold(pcoeff=0.0),
    "never shrink": NeverShrink(pcoeff=0.0),
    "PI 0.2/0.65": PIDController(pcoeff=0.2, icoeff=0.65),
    "PI 0.3/0.4": PIDController(pcoeff=0.3, icoeff=0.4),
    "PI 0.4/0.3": PIDController(pcoeff=0.4, icoeff=0.3),
}

_MU = 0.012277471  # Arenstorf: the moon's mass ratio


def _arenstorf(t, y, args):
    x, v, dx, dv = y[0], y[1], y[2], y[3]
    d1 = ((x + _MU) ** 2 + v**2) ** 1.5
    d2 = ((x - 1 + _MU) ** 2 + v**2) ** 1.5
    ax = x + 2 * dv - (1 - _MU) * (x + _MU) / d1 - _MU * (x - 1 + _MU) / d2
    av = v - 2 * dx - (1 - _MU) * v / d1 - _MU * v / d2
    return jnp.stack([dx, dv, ax, av])


_LINEAR = np.array([[-0.1, 2.0, 0.0], [-2.0, -0.1, 0.3], [0.0, -0.3, -1.0]])
_SPIRAL = np.array([[-0.1, 2.0], [-2.0, -0.1]])

# name: (f, y0, t1); every problem starts at t = 0.
SMALL = {
    "arenstorf": (
        _arenstorf,
        [0.994, 0.0, 0.0, -2.00158510637908252240537862224],
        17.0652165601579625588917206249,
    ),
    "brusselator": (
        lambda t, y, a: jnp.stack([1 + y[0] ** 2 * y[1] - 4 * y[0], 3 * y[0] - y[0] ** 2 * y[1]]),
        [1.5, 3.0],
        20.0,
    ),
    "lotka-volterra": (
        lambda t, y, a: jnp.stack([1.5 * y[0] - y[0] * y[1], y[0] * y[1] - 3 * y[1]]),
        [1.0, 1.0],
        15.0,
    ),
    "van der pol": (
        lambda t, y, a: jnp.stack([y[1], (1 - y[0] ** 2) * y[1] - y[0]]),
        [2.0, 0.0],
        20.0,
    ),
    "lorenz": (
        lambda t, y, a: jnp.stack(
            [10 * (y[1] - y[0]), y[0] * (28 - y[2]) - y[1], y[0] * y[1] - 8 / 3 * y[2]]
        ),
        [1.0, 1.0, 1.0],
        3.0,
    ),
    "linear": (lambda t, y, a: jnp.asarray(_LINEAR) @ y, [1.0, 0.0, 0.5], 5.0),
    "logistic": (lambda t, y, a: y * (1 - y), [0.1], 8.0),
    "spiral": (lambda t, y, a: (y**3) @ jnp.asarray(_SPIRAL), [2.0, 0.0], 25.0),
}


@dataclasses.dataclass(frozen=True)
class Flags:
    problems: tuple[str, ...] = ("all",)
    """small problems (of the module's list), or 'all'"""
    solvers: tuple[str, ...] = ("dopri5,tsit5",)
    """explicit solvers for the small problems"""
    rtols: tuple[str, ...] = ("1e-3,1e-6,1e-9",)
    """relative tolerances of the small problems (atol = rtol / 1000)"""
    cases: tuple[str, ...] = ("mlp,mlp_eqx,odenet,odenet_plain,spiral",)
    """benchmark problems (of benchmarks.run), or 'none'"""
    relu_seeds: int = 3
    """ReLU MLP fields (seeds 0 .. N-1; 0: none)"""
    relu_rtols: tuple[str, ...] = ("1e-3,1e-5",)
    """their tolerances (rtol = atol)"""
    quick: bool = False
    """smaller benchmark problems (a test run)"""
    out: str = ""
    """write the markdown report here too ('' = print only)"""


def small_counts(problems, solver: str, rtol: float) -> dict:
    """{(problem, controller): (nfe, rejected, error in tolerance units)}, float64."""
    atol = rtol / 1000
    rows = {}
    with jax.enable_x64(True):
        for name in problems:
            f, y0, t1 = SMALL[name]
            y0 = jnp.asarray(y0, jnp.float64)
            ts = np.array([0.0, t1])
            ref = ode_jax.odeint(
                f, y0, ts, solver="dopri8", rtol=1e-13, atol=1e-16, max_steps=1 << 17
            )
            ref = ref.ys[-1]
            for c, controller in CONTROLLERS.items():
                sol = ode_jax.odeint(
                    f, y0, ts, solver=solver, rtol=rtol, atol=atol, controller=controller,
                    max_steps=1 << 16,
                )  # fmt: skip
                err = jnp.max(jnp.abs(sol.ys[-1] - ref) / (atol + rtol * jnp.abs(ref)))
                stats = sol.stats
                rows[name, c] = (int(stats["nfe"]), int(stats["num_rejected"]), float(err))
    return rows


def benchmark_counts(case: str, quick: bool) -> dict:
    """{controller: (forward NFE, continuous backward NFE)} on a ``benchmarks.run`` case."""
    from .run import PROBLEMS

    return problem_counts(PROBLEMS[case](quick=quick), case)


def relu_mlp(seed: int, tol: float):
    """A ReLU MLP field on a batch of 64 states (see the module docstring), as a Problem."""
    import equinox as eqx

    from .problems import Problem

    key_mlp, key_y = jax.random.split(jax.random.key(seed))
    mlp = eqx.nn.MLP(8, 8, 32, 2, activation=jax.nn.relu, key=key_mlp)
    params, static = eqx.partition(mlp, eqx.is_array)

    def vf(t, y, p):
        return jax.vmap(eqx.combine(p, static))(y)

    return Problem(
        name=f"relu{seed}", title="ReLU MLP", vf=vf, params=params,
        y0=jax.random.normal(key_y, (64, 8)), ts=np.array([0.0, 1.0], np.float32),
        loss=lambda ys: jnp.sum(ys[-1] ** 2), rtol=tol, atol=tol, make_torch=None,
    )  # fmt: skip


# The neural ODE tables add the default controller with the continuous adjoint's seminorm
# (its backward error norm leaves the parameter adjoint out): backward step control there.
SEMINORM = "default, seminorm"


def problem_counts(problem, label: str) -> dict:
    """{controller: (forward NFE, continuous backward NFE)} on a Problem (and SEMINORM)."""
    rows = {}
    runs = [(c, controller, "continuous") for c, controller in CONTROLLERS.items()]
    runs.append((SEMINORM, PIDController(), ode_jax.ContinuousAdjoint(seminorm=True)))
    for c, controller, adjoint in runs:
        rows[c] = count_solve(problem, ode_jax_method(adjoint, controller))
        cli.log(f"  {label} {c}: {rows[c]}")
    return rows


def _geomean(values) -> float:
    values = [max(v, 1e-3) for v in values]
    return math.exp(sum(math.log(v) for v in values) / len(values))


def main(argv=None) -> str:
    flags = cli.parse(Flags, argv, "controller_study")
    problems = cli.names(flags.problems, list(SMALL), "--problems")
    solvers = cli.names(flags.solvers, sorted(ode_jax.SOLVERS), "--solvers")
    rtols = cli.numbers(flags.rtols, "--rtols")
    from .run import PROBLEMS

    none = [c.strip() for c in flags.cases] == ["none"]
    cases = [] if none else cli.names(flags.cases, list(PROBLEMS), "--cases")
    cli.writable(flags.out)
    names = list(CONTROLLERS)
    head = "| " + " | ".join(names) + " |"
    rule = "---:|" * len(names)
    lines = [
        "# Step-size controllers",
        "",
        f"Command: `python -m benchmarks.controller_study {' '.join(argv or sys.argv[1:])}`  ",
        f"Date: {datetime.datetime.now().isoformat(timespec='minutes')}  ",
        f"jax {jax.__version__}, Python {platform.python_version()}",
        "",
        "Controllers and problems: see the module docstring. NFE: evaluations of the field; "
        "rej: rejected steps; err: the end state's error in tolerance units (largest "
        "component). Totals: NFE summed over the problems, err their geometric mean.",
    ]
    details = []
    lines += ["", "## Small problems (float64), totals", ""]
    lines += ["| solver | rtol " + head, "|---|---:|" + rule]
    for solver in solvers:
        for rtol in rtols:
            rows = small_counts(problems, solver, rtol)
            cells = []
            for c in names:
                nfe = sum(rows[p, c][0] for p in problems)
                rej = sum(rows[p, c][1] for p in problems)
                err = _geomean([rows[p, c][2] for p in problems])
                cells.append(f"{nfe} ({rej} rej, err {err:.2g})")
            lines.append(f"| {solver} | {rtol:g} | " + " | ".join(cells) + " |")
            details += ["", f"### {solver}, rtol {rtol:g}, atol {rtol / 1000:g}", ""]
            details += ["| problem " + head, "|---|" + rule]
            for p in problems:
                cells = [
                    f"{rows[p, c][0]} ({rows[p, c][1]} rej, err {rows[p, c][2]:.2g})" for c in names
                ]
                details.append(f"| {p} | " + " | ".join(cells) + " |")
    nn_names = [*names, SEMINORM]
    nn_head = "| " + " | ".join(nn_names) + " |"
    nn_rule = "---:|" * len(nn_names)
    if cases:
        lines += ["", "## The speed benchmark's problems (float32, dopri5)", ""]
        lines += ["Forward NFE + the continuous adjoint's backward NFE.", ""]
        lines += ["| case " + nn_head, "|---|" + nn_rule]
        for case in cases:
            rows = benchmark_counts(case, flags.quick)
            cells = [f"{rows[c][0]} + {rows[c][1]}" for c in nn_names]
            lines.append(f"| {case} | " + " | ".join(cells) + " |")
    if flags.relu_seeds:
        lines += ["", "## ReLU MLPs (float32, dopri5)", ""]
        lines += ["Forward NFE + the continuous adjoint's backward NFE; rtol = atol.", ""]
        lines += ["| seed | rtol " + nn_head, "|---:|---:|" + nn_rule]
        for tol in cli.numbers(flags.relu_rtols, "--relu-rtols"):
            total = dict.fromkeys(nn_names, (0, 0))
            for seed in range(flags.relu_seeds):
                rows = problem_counts(relu_mlp(seed, tol), f"relu seed {seed} rtol {tol:g}")
                total = {c: (total[c][0] + rows[c][0], total[c][1] + rows[c][1]) for c in nn_names}
                cells = [f"{rows[c][0]} + {rows[c][1]}" for c in nn_names]
                lines.append(f"| {seed} | {tol:g} | " + " | ".join(cells) + " |")
            cells = [f"{total[c][0]} + {total[c][1]}" for c in nn_names]
            lines.append(f"| all | {tol:g} | " + " | ".join(cells) + " |")
    lines += ["", "## Small problems, per problem", *details]
    return cli.publish("\n".join(lines) + "\n", flags.out)


if __name__ == "__main__":
    cli.entry(main)
