"""The built-in solvers by name, and the lookup that resolves ``solver=`` arguments.

Explicit Runge-Kutta tableaux come from :mod:`ode_jax._tableaux`; their dense outputs are the
methods' own continuous extensions (Shampine's quartic for dopri5, Tsitouras' quartic for
tsit5, a degree-6 extension for dopri8 that is 5th-order accurate) and cubic Hermite for bosh3.
New kinds of solver register themselves in :data:`SOLVERS` from their own modules.
"""

from __future__ import annotations

import numpy as np

from . import _tableaux as tab
from ._implicit import KVAERNO3, KVAERNO5, RODAS5
from ._runge_kutta import (  # noqa: F401  (re-exported for tests and extensions)
    RungeKutta,
    _unit,
    dense_eval,
    dense_weights,
    looped,
    rk_step,
)
from ._solver import AbstractSolver


def _dopri5_dense():
    # Shampine's quartic through y0, y1, f0, f1 and the mid-point value y0 + dt * sum(c_mid * k).
    s = 7
    e0, e6 = _unit(s, 0), _unit(s, 6)
    b, m = np.asarray(tab.DOPRI5_B), np.asarray(tab.DOPRI5_C_MID)
    cols = [
        e0,
        e6 - 4 * e0 - 5 * b + 16 * m,
        5 * e0 - 3 * e6 + 14 * b - 32 * m,
        2 * (e6 - e0) - 8 * b + 16 * m,
    ]
    return np.stack(cols, axis=1)


def _tsit5_dense():
    # Tsitouras' interpolant b_i(theta), as given in his 2011 paper, expanded into powers of theta.
    P = np.polynomial.Polynomial
    th = P([0.0, 1.0])
    polys = [
        -1.0530884977290216
        * th
        * (th - 1.3299890189751412)
        * (th**2 - 1.4364028541716351 * th + 0.7139816917074209),
        0.1017 * th**2 * (th**2 - 2.1966568338249754 * th + 1.2949852507374631),
        2.490627285651252793 * th**2 * (th**2 - 2.38535645472061657 * th + 1.57803468208092486),
        -16.54810288924490272 * (th - 1.21712927295533244) * (th - 0.61620406037800089) * th**2,
        47.37952196281928122 * (th - 1.203071208372362603) * (th - 0.658047292653547382) * th**2,
        -34.87065786149660974 * (th - 1.2) * (th - 0.666666666666666667) * th**2,
        2.5 * (th - 1) * (th - 0.6) * th**2,
    ]
    out = np.zeros((7, 4))
    for i, p in enumerate(polys):
        coef = np.pad(p.coef, (0, 5 - len(p.coef)))
        out[i] = coef[1:5]
    # Tsitouras' polynomials are rounded to ~16 digits; make them sum exactly to b at theta = 1.
    out[:, -1] += np.asarray(tab.TSIT5_B) - out.sum(axis=1)
    return out


_BOSH3_B = [2 / 9, 1 / 3, 4 / 9, 0.0]
_RK4_B = [1 / 6, 1 / 3, 1 / 3, 1 / 6]

SOLVERS: dict[str, AbstractSolver] = {
    s.name: s
    for s in [
        RungeKutta("euler", 1, [0.0], [], [1.0]),
        RungeKutta("midpoint", 2, [0.0, 0.5], [[0.5]], [0.0, 1.0]),
        RungeKutta("heun", 2, [0.0, 1.0], [[1.0]], [0.5, 0.5]),
        RungeKutta("rk4", 4, [0.0, 0.5, 0.5, 1.0], [[0.5], [0.0, 0.5], [0.0, 0.0, 1.0]], _RK4_B),
        RungeKutta(
            "bosh3",
            3,
            [0.0, 0.5, 0.75, 1.0],
            [[0.5], [0.0, 0.75], [2 / 9, 1 / 3, 4 / 9]],
            _BOSH3_B,
            [2 / 9 - 7 / 24, 1 / 3 - 1 / 4, 4 / 9 - 1 / 3, -1 / 8],
        ),
        RungeKutta(
            "dopri5",
            5,
            [0.0, *tab.DOPRI5_C],
            tab.DOPRI5_A,
            tab.DOPRI5_B,
            tab.DOPRI5_B_ERR,
            _dopri5_dense(),
        ),
        RungeKutta(
            "tsit5",
            5,
            [0.0, *tab.TSIT5_C],
            tab.TSIT5_A,
            tab.TSIT5_B,
            tab.TSIT5_B_ERR,
            _tsit5_dense(),
        ),
        RungeKutta(
            "dopri8",
            8,
            [0.0, *tab.DOPRI8_C],
            tab.DOPRI8_A,
            tab.DOPRI8_B,
            tab.DOPRI8_B_ERR,
            np.asarray(tab.DOPRI8_DENSE)[:, ::-1],
        ),
    ]
}


# Stiff problems: ESDIRK (simplified Newton) and Rosenbrock methods.
SOLVERS.update({m.name: m for m in (KVAERNO3, KVAERNO5, RODAS5)})


def get_solver(solver) -> AbstractSolver:
    """Resolve a solver name or object; raise a ValueError listing the valid names."""
    if isinstance(solver, AbstractSolver):
        return solver
    if isinstance(solver, str) and solver.lower() in SOLVERS:
        return SOLVERS[solver.lower()]
    raise ValueError(
        f"solver={solver!r} is not a known solver; valid names are {sorted(SOLVERS)} "
        "(or pass a solver object such as an ode_jax.RungeKutta)."
    )
