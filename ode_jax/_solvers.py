"""Explicit Runge-Kutta methods as data: a tableau, an embedded error estimate, a dense output.

Every method is a :class:`RungeKutta` instance; one generic step (:func:`rk_step`) and one generic
interpolant (:func:`dense_eval`) serve them all. Dense output is stored as a matrix ``dense`` of
shape (stages, degree): over a step from ``t`` to ``t + dt`` with stage derivatives ``k_i``,

    y(t + theta * dt) = y(t) + dt * sum_i k_i * sum_j dense[i][j] * theta ** (j + 1),

which covers the methods' own continuous extensions (Shampine's quartic for dopri5, Tsitouras'
quartic for tsit5, a degree-6 extension for dopri8 that is 5th-order accurate) and cubic Hermite
for bosh3.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from . import _tableaux as tab


@dataclasses.dataclass(frozen=True, eq=False)
class RungeKutta:
    """An explicit Runge-Kutta method.

    Attributes:
        name: short name ("dopri5", ...).
        order: order of the propagated solution.
        c: nodes, length ``stages`` (``c[0] == 0``).
        a: lower-triangular coefficients; ``a[i]`` has ``i`` entries (row 0 is empty).
        b: solution weights, length ``stages``.
        b_err: weights of the error estimate ``dt * sum(b_err * k)``, or None (fixed step).
        dense: (stages, degree) dense-output matrix, see the module docstring.
        stage_loop: compute the stages in a ``lax.fori_loop`` instead of unrolling them, so the
            vector field appears once in the compiled program instead of once per stage. This
            cuts compile time for large vector fields (the continuous adjoint's backward solve
            uses it) at a small cost per step; see :func:`looped`.
    """

    name: str
    order: int
    c: tuple
    a: tuple
    b: tuple
    b_err: tuple | None
    dense: tuple
    stage_loop: bool = False

    @property
    def stages(self) -> int:
        return len(self.c)

    @property
    def adaptive(self) -> bool:
        return self.b_err is not None

    @property
    def fsal(self) -> bool:
        """First-same-as-last: the last stage is evaluated at (t + dt, y1)."""
        last = self.a[-1] if len(self.a[-1]) == self.stages - 1 else None
        return (
            self.stages > 1
            and self.c[-1] == 1.0
            and last is not None
            and np.allclose(last, self.b[:-1], rtol=0, atol=1e-15)
            and self.b[-1] == 0.0
        )

    @property
    def loops_stages(self) -> bool:
        """Whether :func:`rk_step` runs the stages in a loop (``stage_loop``, > 2 stages)."""
        return self.stage_loop and self.stages > 2

    @property
    def evals_per_step(self) -> int:
        return self.stages - 1 if self.fsal else self.stages

    def __repr__(self) -> str:
        loop = ", stage_loop=True" if self.stage_loop else ""
        return f"RungeKutta({self.name!r}, order={self.order}{loop})"


@functools.cache
def looped(method: RungeKutta) -> RungeKutta:
    """The same method with its stages in a loop (one object per method, so jit caches hit)."""
    if method.stage_loop:
        return method
    return dataclasses.replace(method, stage_loop=True)


def _make(name, order, c, a, b, b_err, dense):
    s = len(c)
    a_rows = ((),) + tuple(tuple(float(x) for x in row) for row in a)
    assert len(a_rows) == s and all(len(r) == i for i, r in enumerate(a_rows)), name
    dense = np.asarray(dense, dtype=np.float64)
    assert dense.shape[0] == s, name
    # The dense output must reproduce the step's end point at theta = 1.
    np.testing.assert_allclose(dense.sum(axis=1), b, atol=1e-12, err_msg=name)
    return RungeKutta(
        name=name,
        order=order,
        c=tuple(float(x) for x in c),
        a=a_rows,
        b=tuple(float(x) for x in b),
        b_err=None if b_err is None else tuple(float(x) for x in b_err),
        dense=tuple(tuple(float(x) for x in row) for row in dense),
    )


def _unit(s, i):
    e = np.zeros(s)
    e[i] = 1.0
    return e


def _hermite_dense(b):
    """Cubic Hermite through (y0, f0, y1, f1) for an FSAL method whose last stage is f1."""
    s = len(b)
    e0, e1, b = _unit(s, 0), _unit(s, s - 1), np.asarray(b)
    return np.stack([e0, -2 * e0 + 3 * b - e1, e0 - 2 * b + e1], axis=1)


def _linear_dense(b):
    # Fixed-step methods land every step on the output times, so their dense output is only ever
    # evaluated at theta = 1, where this is exact.
    return np.asarray(b, dtype=np.float64)[:, None]


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


def _dopri8_dense():
    return np.asarray(tab.DOPRI8_DENSE)[:, ::-1]


_BOSH3_B = [2 / 9, 1 / 3, 4 / 9, 0.0]
_RK4_B = [1 / 6, 1 / 3, 1 / 3, 1 / 6]

SOLVERS: dict[str, RungeKutta] = {
    s.name: s
    for s in [
        _make("euler", 1, [0.0], [], [1.0], None, _linear_dense([1.0])),
        _make("midpoint", 2, [0.0, 0.5], [[0.5]], [0.0, 1.0], None, _linear_dense([0.0, 1.0])),
        _make("heun", 2, [0.0, 1.0], [[1.0]], [0.5, 0.5], None, _linear_dense([0.5, 0.5])),
        _make(
            "rk4",
            4,
            [0.0, 0.5, 0.5, 1.0],
            [[0.5], [0.0, 0.5], [0.0, 0.0, 1.0]],
            _RK4_B,
            None,
            _linear_dense(_RK4_B),
        ),
        _make(
            "bosh3",
            3,
            [0.0, 0.5, 0.75, 1.0],
            [[0.5], [0.0, 0.75], [2 / 9, 1 / 3, 4 / 9]],
            _BOSH3_B,
            [2 / 9 - 7 / 24, 1 / 3 - 1 / 4, 4 / 9 - 1 / 3, -1 / 8],
            _hermite_dense(_BOSH3_B),
        ),
        _make(
            "dopri5",
            5,
            [0.0, *tab.DOPRI5_C],
            tab.DOPRI5_A,
            tab.DOPRI5_B,
            tab.DOPRI5_B_ERR,
            _dopri5_dense(),
        ),
        _make(
            "tsit5",
            5,
            [0.0, *tab.TSIT5_C],
            tab.TSIT5_A,
            tab.TSIT5_B,
            tab.TSIT5_B_ERR,
            _tsit5_dense(),
        ),
        _make(
            "dopri8",
            8,
            [0.0, *tab.DOPRI8_C],
            tab.DOPRI8_A,
            tab.DOPRI8_B,
            tab.DOPRI8_B_ERR,
            _dopri8_dense(),
        ),
    ]
}


def get_solver(solver) -> RungeKutta:
    """Resolve a solver name or object; raise a ValueError listing the valid names."""
    if isinstance(solver, RungeKutta):
        return solver
    if isinstance(solver, str) and solver.lower() in SOLVERS:
        return SOLVERS[solver.lower()]
    raise ValueError(
        f"solver={solver!r} is not a known solver; valid names are {sorted(SOLVERS)} "
        "(or pass an ode_jax.RungeKutta instance)."
    )


# ---------------------------------------------------------------------------------------------
# The generic step and interpolant.


def lincomb(y, scale, coeffs, ks):
    """``y + scale * sum_i coeffs[i] * ks[i]`` over pytrees, skipping zero coefficients.

    ``y`` may be None (then the sum alone). Coefficients may be Python floats or traced scalars;
    ``scale`` is cast to each leaf's dtype so float32 states stay float32.
    """
    terms = [(c, k) for c, k in zip(coeffs, ks) if not (isinstance(c, float) and c == 0.0)]

    def leaf(y_leaf, *k_leaves):
        dtype = k_leaves[0].dtype if k_leaves else y_leaf.dtype
        acc = None
        for (c, _), k in zip(terms, k_leaves):
            term = (c if isinstance(c, float) else jnp.asarray(c).astype(dtype)) * k
            acc = term if acc is None else acc + term
        if acc is None:
            return y_leaf
        acc = jnp.asarray(scale).astype(dtype) * acc
        return acc if y_leaf is None else y_leaf + acc

    if y is None:
        return jax.tree.map(lambda *k: leaf(None, *k), *[k for _, k in terms])
    return jax.tree.map(leaf, y, *[k for _, k in terms])


def rk_step(method: RungeKutta, f, t, y, dt, args, f0, have_f0=None):
    """One explicit RK step from (t, y) with step dt.

    Args:
        f0: f(t, y, args), used as the first stage (FSAL methods carry it between steps); if None
            it is evaluated here.
        have_f0: for a method that loops its stages, an optional traced bool: when False, ``f0``
            is a placeholder and the first stage is evaluated inside the stage loop (so a solve
            needs no copy of f outside its loop for it).

    Returns:
        (y1, y_err, ks): the new state, the error estimate (None for fixed-step methods) and the
        list of stage derivatives; for FSAL methods ``ks[-1] == f(t + dt, y1)``.
    """
    if method.loops_stages:
        return _rk_step_looped(method, f, t, y, dt, args, f0, have_f0)
    if f0 is None:
        f0 = f(t, y, args)
    ks = [f0]
    y1 = None
    for i in range(1, method.stages):
        yi = lincomb(y, dt, method.a[i], ks)
        if method.fsal and i == method.stages - 1:
            y1 = yi  # the last stage is evaluated at the new state itself
        ks.append(f(t + method.c[i] * dt, yi, args))
    if y1 is None:
        y1 = lincomb(y, dt, method.b, ks)
    y_err = None if method.b_err is None else lincomb(None, dt, method.b_err, ks)
    return y1, y_err, ks


def stage_matrices(method: RungeKutta, dtype):
    """The tableau as arrays: (a as a (stages, stages) matrix, b, c)."""
    s = method.stages
    a = np.zeros((s, s))
    for i, row in enumerate(method.a):
        a[i, : len(row)] = row
    return (
        jnp.asarray(a, dtype),
        jnp.asarray(method.b, dtype),
        jnp.asarray(method.c, dtype),
    )


def combine(w, stacked):
    """sum_i w[i] * stacked[i] for every leaf of a pytree of (stages, ...) arrays."""
    return jax.tree.map(lambda k: jnp.tensordot(w.astype(k.dtype), k, axes=1), stacked)


def _rk_step_looped(method: RungeKutta, f, t, y, dt, args, f0, have_f0=None):
    """:func:`rk_step` with the stages in a ``fori_loop`` over a stacked (stages, ...) buffer.

    The loop starts at stage 1 when f0 is known, else at stage 0 (whose input is y itself:
    row 0 of the tableau is zero, and the buffer holds only finite zeros at that point).
    """
    s = method.stages
    tdtype = jnp.result_type(t, dt)
    a_mat, _, c_vec = stage_matrices(method, tdtype)

    def body(i, ks):
        yi = jax.tree.map(lambda yl, x: yl + dt.astype(yl.dtype) * x, y, combine(a_mat[i], ks))
        k = f(t + c_vec[i] * dt, yi, args)
        return jax.tree.map(lambda buf, v: buf.at[i].set(v.astype(buf.dtype)), ks, k)

    if f0 is None:
        ks = jax.tree.map(lambda x: jnp.zeros((s,) + x.shape, x.dtype), y)
        start = 0
    else:
        ks = jax.tree.map(lambda k: jnp.zeros((s,) + k.shape, k.dtype).at[0].set(k), f0)
        start = 1 if have_f0 is None else jnp.where(have_f0, 1, 0)
    ks = jax.lax.fori_loop(start, s, body, ks)
    ks = [jax.tree.map(lambda k, i=i: k[i], ks) for i in range(s)]
    y1 = lincomb(y, dt, method.b, ks)
    y_err = None if method.b_err is None else lincomb(None, dt, method.b_err, ks)
    return y1, y_err, ks


def dense_weights(method: RungeKutta, theta, derivative: bool = False):
    """The weights b_i(theta) (or their theta-derivatives) of the dense output, one per stage."""
    weights = []
    for row in method.dense:
        if all(x == 0.0 for x in row):
            weights.append(0.0)
            continue
        w = 0.0
        for j, x in enumerate(row):
            if x != 0.0:
                w = w + (x * (j + 1) * theta**j if derivative else x * theta ** (j + 1))
        weights.append(w)
    return weights


def dense_eval(method: RungeKutta, y0, ks, dt, theta):
    """The dense output at t + theta * dt of a step from (t, y0) with stage derivatives ks."""
    return lincomb(y0, dt, dense_weights(method, theta), ks)
