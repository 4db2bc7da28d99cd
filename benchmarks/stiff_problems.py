"""Stiff reference problems (Hairer & Wanner, "Solving ODEs II"): each in JAX (for ode_jax and
diffrax) and in NumPy with its Jacobian (for scipy), and a scipy Radau reference.

    python -m benchmarks.stiff_problems   # prints the Radau references the tests embed
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax.numpy as jnp
import numpy as np

ROBERTSON_K = (0.04, 3e7, 1e4)


def _robertson_terms(y, k):
    k1, k2, k3 = k[0], k[1], k[2]
    return [
        -k1 * y[0] + k3 * y[1] * y[2],
        k1 * y[0] - k2 * y[1] ** 2 - k3 * y[1] * y[2],
        k2 * y[1] ** 2,
    ]


def robertson(t, y, k):
    return jnp.stack(_robertson_terms(y, k))


def _robertson_np(t, y, k=ROBERTSON_K):
    return _robertson_terms(y, k)


def _robertson_jac(t, y, k=ROBERTSON_K):
    k1, k2, k3 = k
    return [
        [-k1, k3 * y[2], k3 * y[1]],
        [k1, -2 * k2 * y[1] - k3 * y[2], -k3 * y[1]],
        [0.0, 2 * k2 * y[1], 0.0],
    ]


def van_der_pol(t, y, mu):
    """MATLAB's vdp1000 form: y1' = y2, y2' = mu (1 - y1^2) y2 - y1."""
    return jnp.stack([y[1], mu * (1 - y[0] ** 2) * y[1] - y[0]])


def _vdp_np(t, y, mu=1000.0):
    return [y[1], mu * (1 - y[0] ** 2) * y[1] - y[0]]


def _vdp_jac(t, y, mu=1000.0):
    return [[0.0, 1.0], [-2 * mu * y[0] * y[1] - 1, mu * (1 - y[0] ** 2)]]


def hires(t, y, args):
    y1, y2, y3, y4, y5, y6, y7, y8 = (y[i] for i in range(8))
    return jnp.stack(_hires_terms(y1, y2, y3, y4, y5, y6, y7, y8))


def _hires_terms(y1, y2, y3, y4, y5, y6, y7, y8):
    return [
        -1.71 * y1 + 0.43 * y2 + 8.32 * y3 + 0.0007,
        1.71 * y1 - 8.75 * y2,
        -10.03 * y3 + 0.43 * y4 + 0.035 * y5,
        8.32 * y2 + 1.71 * y3 - 1.12 * y4,
        -1.745 * y5 + 0.43 * y6 + 0.43 * y7,
        -280.0 * y6 * y8 + 0.69 * y4 + 1.71 * y5 - 0.43 * y6 + 0.69 * y7,
        280.0 * y6 * y8 - 1.81 * y7,
        -280.0 * y6 * y8 + 1.81 * y7,
    ]


def _hires_np(t, y):
    return _hires_terms(*y)


@dataclasses.dataclass(frozen=True)
class StiffProblem:
    name: str
    f: Callable  # f(t, y, args), JAX
    args: object
    y0: tuple
    t1: float
    f_np: Callable  # f(t, y), NumPy
    jac_np: Callable
    rtol: float  # a tolerance at which the problem is usually solved
    atol: float
    reference: tuple  # y(t1): scipy Radau, rtol = atol = 1e-12 (Robertson: atol 1e-16)


PROBLEMS = {
    p.name: p
    for p in (
        StiffProblem(
            "robertson", robertson, ROBERTSON_K, (1.0, 0.0, 0.0), 1e5, _robertson_np,
            _robertson_jac, 1e-6, 1e-10,
            (1.7865921142322449e-02, 7.2747514685287461e-08, 9.8213400611016255e-01),
        ),
        StiffProblem(
            "van_der_pol", van_der_pol, 1000.0, (2.0, 0.0), 3000.0, _vdp_np, _vdp_jac, 1e-6,
            1e-6, (-1.5106069367599528e00, 1.1783800006902542e-03),
        ),
        StiffProblem(
            "hires", hires, None, (1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0057), 321.8122,
            _hires_np, None, 1e-7, 1e-9,
            (7.3713125732903137e-04, 1.4424857263092139e-04, 5.8887297409018318e-05,
             1.1756513432765474e-03, 2.3863561987255977e-03, 6.2389682524020967e-03,
             2.8499983951202641e-03, 2.8500016048797322e-03),
        ),
    )
}  # fmt: skip


def radau_reference(p: StiffProblem, rtol=1e-12, atol=1e-12):
    from scipy.integrate import solve_ivp

    r = solve_ivp(
        p.f_np, (0.0, p.t1), list(p.y0), method="Radau", rtol=rtol, atol=atol, jac=p.jac_np
    )
    return np.asarray(r.y[:, -1])


if __name__ == "__main__":
    for p in PROBLEMS.values():
        atol = 1e-16 if p.name == "robertson" else 1e-12
        ref = radau_reference(p, atol=atol)
        print(p.name, ", ".join(f"{x:.16e}" for x in ref))
