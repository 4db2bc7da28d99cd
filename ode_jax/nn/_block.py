"""ODEBlock: a layer that maps y(t0) to y(t1) by solving an ODE with a learned vector field."""

from __future__ import annotations

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._regularise import Regulariser, regularised_odeint, steer_end_time
from .._settings import SolveSettings
from ._solve import SETTINGS_FIELDS, solve_with

# torchdiffeq's ODE-Net: dopri5 at rtol = atol = 1e-3.
DEFAULT_SETTINGS = SolveSettings(solver="dopri5", rtol=1e-3, atol=1e-3)


def call_field(t, y, field):
    """``f(t, y, args)`` for a vector field module passed as ``args``: ``field(t, y)``.

    The adapter between :func:`ode_jax.odeint`'s signature and equinox fields, e.g.
    ``ode_jax.odeint(call_field, y0, ts, field)``; the field's arrays are then ``args``, so
    every adjoint returns their gradient.
    """
    return field(t, y)


class ODEBlock(eqx.Module):
    """``y(t1)`` from ``y(t0) = y0`` under ``dy/dt = field(t, y)``: the ODE-Net block.

    Args:
        field: the vector field, any callable module ``field(t, y) -> dy/dt`` (e.g.
            :class:`MLPField`, or a stack of ``ConcatConv2d``); its arrays are the parameters.
        t1, t0: integration interval.
        settings: how to solve (:class:`ode_jax.SolveSettings`: solver, tolerances, adjoint...);
            default dopri5 at rtol = atol = 1e-3.

    ``block(y0)`` returns ``y1``. ``block.solve(y0, probe, **overrides)`` returns
    ``(y1, stats)`` where ``stats`` is the forward pass's ``{"nfe", "num_steps", ...}``;
    ``overrides`` replace settings for that call (e.g. ``rtol=1e-5``; traced values allowed).
    Pass a probe from :func:`ode_jax.make_probe` and differentiate w.r.t. it too to read the
    backward pass's statistics (:func:`ode_jax.probe_stats`). The state is solved as one ODE,
    so a batch ``y0`` of shape ``(N, ...)`` shares one step-size sequence (as in torchdiffeq).

    ``regulariser``: an :class:`ode_jax.Regulariser` for training solves
    (``block.solve(y0, probe, regularise=True, key=key)``): its penalties are integrated along
    the solve and returned in ``stats["penalties"]`` (sums over the batch), and with
    ``steer=b`` the solve ends at ``T ~ U(t1 - b, t1 + b)``. Plain solves (evaluation) ignore it.
    """

    field: Callable
    t0: float = eqx.field(static=True)
    t1: float = eqx.field(static=True)
    settings: SolveSettings = eqx.field(static=True)
    regulariser: Regulariser | None = eqx.field(static=True, default=None)

    def __init__(
        self,
        field: Callable,
        t1: float = 1.0,
        *,
        t0: float = 0.0,
        settings: SolveSettings = DEFAULT_SETTINGS,
        regulariser: Regulariser | None = None,
    ):
        if not t1 > t0:
            raise ValueError(f"ODEBlock needs t1 > t0, got t0={t0}, t1={t1}")
        if not isinstance(settings, SolveSettings):
            raise TypeError(f"settings must be an ode_jax.SolveSettings, got {settings!r}")
        self.field = field
        self.t0, self.t1 = float(t0), float(t1)
        if regulariser is not None and not isinstance(regulariser, Regulariser):
            raise TypeError(f"regulariser must be an ode_jax.Regulariser, got {regulariser!r}")
        if regulariser is not None and regulariser.steer >= t1 - t0:
            raise ValueError(f"STEER's half width {regulariser.steer} must be < t1 - t0")
        self.settings = settings
        self.regulariser = regulariser

    def solve(self, y0, probe=None, *, regularise: bool = False, key=None, **overrides):
        """Returns ``(y1, stats)``; ``stats`` as in :class:`ode_jax.Solution`.

        ``regularise=True``: the training solve with :attr:`regulariser` (``key`` draws its
        Hutchinson probe and STEER end time); ``stats["penalties"]`` holds the penalties.
        """
        if regularise and self.regulariser is not None:
            return self._solve_regularised(y0, probe, key, overrides)
        ts = np.asarray([self.t0, self.t1], jnp.result_type(y0))  # numpy: known when traced
        sol = solve_with(
            self.settings, call_field, y0, ts, self.field, probe=probe, overrides=overrides
        )
        return sol.ys[-1], sol.stats

    def _solve_regularised(self, y0, probe, key, overrides):
        reg, dtype = self.regulariser, jnp.result_type(y0)
        if reg.needs_key and key is None:
            raise ValueError("this ODEBlock's regulariser draws random numbers: pass key=...")
        unknown = sorted(set(overrides) - set(SETTINGS_FIELDS))
        if unknown:
            raise TypeError(f"unknown solve setting(s) {unknown}; settings: {SETTINGS_FIELDS}")
        k_probe, k_steer = (None, None) if key is None else tuple(jax.random.split(key))
        ts = np.asarray([self.t0, self.t1], dtype)
        if reg.steer > 0:
            t_end = steer_end_time(k_steer, self.t0, self.t1, reg.steer, dtype)
            ts = jnp.stack([jnp.asarray(self.t0, dtype), t_end])
        kwargs = self.settings.kwargs() | overrides
        sol, penalties = regularised_odeint(
            call_field, y0, ts, self.field, regulariser=reg, key=k_probe, probe=probe, **kwargs
        )
        return sol.ys[-1], {**sol.stats, "penalties": penalties}

    def __call__(self, y0, probe=None):
        return self.solve(y0, probe)[0]
