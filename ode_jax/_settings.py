"""One settings type for every model that solves an ODE: which solver, how accurately, and how
it is differentiated."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import equinox as eqx

from ._adjoint import AbstractAdjoint, get_adjoint, positive_or_none
from ._control import PIDController
from ._odeint import odeint
from ._solution import Solution
from ._solver import AbstractSolver
from ._solvers import get_solver


class SolveSettings(eqx.Module):
    """How to solve: the keyword arguments of :func:`ode_jax.odeint` that are not the problem.

    Models (:class:`ode_jax.nn.ODEBlock`, the CNF, the latent ODE, ...) hold one of these, and
    configs build one; ``settings.replace(rtol=1e-5)`` or ``settings.odeint(..., rtol=1e-5)``
    override a field for one call. All fields are static (hashable), so a model holding
    settings is a valid ``jit`` argument and changing a field recompiles.

    Args:
        solver: a name from :data:`ode_jax.SOLVERS` or a solver object.
        rtol, atol: tolerances of the forward solve.
        dt0: first step size (adaptive) or the step size (fixed-step solvers).
        dtmax: largest step size, or None.
        max_steps: bound on the forward solve's attempted steps.
        adjoint: "continuous", "discrete" or an adjoint object (its own options inside).
        controller: step-size controller (default :class:`ode_jax.PIDController`).
    """

    solver: str | AbstractSolver = eqx.field(static=True, default="tsit5")
    rtol: float = eqx.field(static=True, default=1e-6)
    atol: float = eqx.field(static=True, default=1e-8)
    dt0: float | None = eqx.field(static=True, default=None)
    dtmax: float | None = eqx.field(static=True, default=None)
    max_steps: int = eqx.field(static=True, default=4096)
    adjoint: str | AbstractAdjoint = eqx.field(static=True, default="continuous")
    controller: PIDController | None = eqx.field(static=True, default=None)

    def __post_init__(self):
        get_solver(self.solver)  # a clear error now, not at the first solve
        get_adjoint(self.adjoint)
        for name in ("rtol", "atol", "dt0", "dtmax"):
            positive_or_none("SolveSettings", name, getattr(self, name))
        positive_or_none("SolveSettings", "max_steps", self.max_steps, integer=True)
        if not get_solver(self.solver).adaptive and self.dt0 is None:
            raise ValueError(
                f"SolveSettings: solver={self.solver!r} takes fixed steps: give dt0 (the step)"
            )

    def replace(self, **overrides) -> SolveSettings:
        """A copy with some fields changed (validated like the original)."""
        unknown = set(overrides) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise TypeError(
                f"SolveSettings has no field(s) {sorted(unknown)}; fields: "
                f"{[f.name for f in dataclasses.fields(self)]}"
            )
        return dataclasses.replace(self, **overrides)

    def kwargs(self) -> dict:
        """The settings as keyword arguments of :func:`ode_jax.odeint`."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def odeint(self, f: Callable, y0, ts, args=None, *, probe=None, throw=True, **overrides):
        """:func:`ode_jax.odeint` with these settings; ``overrides`` replace fields for this call
        and may be traced values (a tolerance swept under jit compiles once)."""
        fields = {f.name for f in dataclasses.fields(self)}
        unknown = set(overrides) - fields
        if unknown:
            raise TypeError(
                f"SolveSettings has no field(s) {sorted(unknown)}; fields: {sorted(fields)}"
            )
        kwargs = {**self.kwargs(), **overrides}
        sol: Solution = odeint(f, y0, ts, args, probe=probe, throw=throw, **kwargs)
        return sol
