"""ODEBlock: a layer that maps y(t0) to y(t1) by solving an ODE with a learned vector field."""

from __future__ import annotations

from collections.abc import Callable

import equinox as eqx
import jax.numpy as jnp
import numpy as np

from .._odeint import odeint


def _call_field(t, y, field):
    return field(t, y)


class ODEBlock(eqx.Module):
    """``y(t1)`` from ``y(t0) = y0`` under ``dy/dt = field(t, y)``: the ODE-Net block.

    Args:
        field: the vector field, any callable module ``field(t, y) -> dy/dt`` (e.g.
            :class:`MLPField`, or a stack of ``ConcatConv2d``); its arrays are the parameters.
        t1, t0: integration interval.
        solver, rtol, atol, adjoint, max_steps, adjoint_rtol, adjoint_atol, seminorm: passed to
            :func:`ode_jax.odeint`.

    ``block(y0)`` returns ``y1``. ``block.solve(y0, probe)`` returns ``(y1, stats)`` where
    ``stats`` is the forward pass's ``{"nfe", "num_steps", ...}``; pass a probe from
    :func:`ode_jax.make_probe` and differentiate w.r.t. it too to read the backward pass's
    statistics (:func:`ode_jax.probe_stats`). The state is solved as one ODE, so a batch
    ``y0`` of shape ``(N, ...)`` shares one step-size sequence (as in torchdiffeq).
    """

    field: Callable
    t0: float = eqx.field(static=True)
    t1: float = eqx.field(static=True)
    solver: str = eqx.field(static=True)
    rtol: float = eqx.field(static=True)
    atol: float = eqx.field(static=True)
    adjoint: str = eqx.field(static=True)
    max_steps: int = eqx.field(static=True)
    adjoint_rtol: float | None = eqx.field(static=True)
    adjoint_atol: float | None = eqx.field(static=True)
    seminorm: bool = eqx.field(static=True)

    def __init__(
        self,
        field: Callable,
        t1: float = 1.0,
        *,
        t0: float = 0.0,
        solver: str = "dopri5",
        rtol: float = 1e-3,
        atol: float = 1e-3,
        adjoint: str = "continuous",
        max_steps: int = 4096,
        adjoint_rtol: float | None = None,
        adjoint_atol: float | None = None,
        seminorm: bool = False,
    ):
        if not t1 > t0:
            raise ValueError(f"ODEBlock needs t1 > t0, got t0={t0}, t1={t1}")
        self.field = field
        self.t0, self.t1 = float(t0), float(t1)
        self.solver, self.adjoint = solver, adjoint
        self.rtol, self.atol = float(rtol), float(atol)
        self.max_steps = int(max_steps)
        self.adjoint_rtol, self.adjoint_atol = adjoint_rtol, adjoint_atol
        self.seminorm = bool(seminorm)

    def solve(self, y0, probe=None):
        """Returns ``(y1, stats)``; ``stats`` as in :class:`ode_jax.Solution`."""
        ts = np.asarray([self.t0, self.t1], jnp.result_type(y0))  # numpy: known when traced
        sol = odeint(
            _call_field,
            y0,
            ts,
            self.field,
            solver=self.solver,
            rtol=self.rtol,
            atol=self.atol,
            adjoint=self.adjoint,
            max_steps=self.max_steps,
            adjoint_rtol=self.adjoint_rtol,
            adjoint_atol=self.adjoint_atol,
            seminorm=self.seminorm,
            probe=probe,
        )
        return sol.ys[-1], sol.stats

    def __call__(self, y0, probe=None):
        return self.solve(y0, probe)[0]
