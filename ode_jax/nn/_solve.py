"""How the models of ``ode_jax.nn`` solve: the model's :class:`ode_jax.SolveSettings` plus
per-call overrides."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from .._odeint import odeint
from .._settings import SolveSettings
from .._solution import Solution

SETTINGS_FIELDS = tuple(f.name for f in dataclasses.fields(SolveSettings))


def solve_with(
    settings: SolveSettings, f: Callable, y0, ts, args=None, *, probe=None, overrides: dict
) -> Solution:
    """:func:`ode_jax.odeint` with ``settings``, some fields replaced by ``overrides``.

    The overrides go to ``odeint`` itself rather than into a new (static, hashed) settings
    object, so they may be traced values: a tolerance swept under ``jit`` compiles once.
    """
    unknown = sorted(set(overrides) - set(SETTINGS_FIELDS))
    if unknown:
        raise TypeError(f"unknown solve setting(s) {unknown}; settings: {list(SETTINGS_FIELDS)}")
    return odeint(f, y0, ts, args, probe=probe, **(settings.kwargs() | overrides))
