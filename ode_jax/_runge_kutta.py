"""Explicit Runge-Kutta methods as data: a tableau, an embedded error estimate, a dense output.

One generic step (:func:`rk_step`) and one generic interpolant (:func:`dense_eval`) serve every
tableau. Dense output is a matrix ``dense`` of shape (stages, degree): over a step from ``t``
to ``t + dt`` with stage derivatives ``k_i``,

    y(t + theta * dt) = y(t) + dt * sum_i k_i * sum_j dense[i][j] * theta ** (j + 1).

:class:`RungeKutta` owns its fast paths: FSAL (the last stage of a step is the first of the
next), a lazily evaluated first stage, stages in a ``fori_loop``, and a stage-by-stage VJP for
the discrete adjoint that skips an FSAL method's last stage when no output needs it.
"""

from __future__ import annotations

import functools
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ._solver import AbstractSolver, tree_where

_TOL = 1e-10  # consistency checks of user tableaux (published constants have ~16 digits)


def _floats(x, what, name):
    try:
        arr = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ValueError(f"RungeKutta {name!r}: {what} must be numbers, got {x!r}") from e
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"RungeKutta {name!r}: {what} must be finite, got {x!r}")
    return arr


def _lower_rows(a, s, name):
    """The rows of ``a`` as tuples, row i holding i entries. Accepts the s - 1 rows below the
    first (as tableaux are printed), all s rows, or an (s, s) strictly lower-triangular matrix."""
    rows = [list(r) for r in a]
    if len(rows) == s and all(len(r) == s for r in rows) and s > 1:
        full = _floats(rows, "a", name)
        if np.any(np.triu(full) != 0):
            raise ValueError(
                f"RungeKutta {name!r}: a must be strictly lower triangular for an explicit "
                f"method; nonzero entries on or above the diagonal: "
                f"{[tuple(ij) for ij in np.argwhere(np.triu(full) != 0)]}"
            )
        return ((),) + tuple(tuple(float(x) for x in full[i, :i]) for i in range(1, s))
    if len(rows) == s - 1:
        rows = [[]] + rows
    if len(rows) != s:
        raise ValueError(
            f"RungeKutta {name!r}: a has {len(rows)} rows for {s} stages (len(c)); give the "
            f"{s - 1} rows below the first, or an ({s}, {s}) matrix"
        )
    out = []
    for i, r in enumerate(rows):
        if len(r) != i:
            raise ValueError(
                f"RungeKutta {name!r}: row {i} of a has {len(r)} entries; an explicit method's "
                f"row i has i entries (stage i uses the stages before it)"
            )
        out.append(tuple(float(x) for x in _floats(r, f"a[{i}]", name)) if r else ())
    return tuple(out)


class RungeKutta(AbstractSolver):
    """An explicit Runge-Kutta method, validated on construction.

    Args:
        name: short name ("dopri5", ...), used in messages.
        order: order of the propagated solution (checked against the quadrature conditions
            ``b . c**(k-1) = 1/k``, k <= order).
        c: nodes, length ``stages``, ``c[0] == 0``.
        a: the coefficients: the ``stages - 1`` rows below the first (row i has i entries),
            all ``stages`` rows, or a strictly lower-triangular (stages, stages) matrix. Each
            row must sum to its node.
        b: solution weights, length ``stages``, summing to 1.
        b_err: weights of the error estimate ``dt * sum(b_err * k)`` (b minus the embedded
            method's weights), or None for a fixed-step method.
        dense: (stages, degree) dense-output matrix (see the module docstring); its rows must
            sum to ``b``. Default: cubic Hermite for FSAL methods, and for fixed-step methods
            the step's end point (their steps land on every output time). An adaptive method
            that is not FSAL must give one.
        stage_loop: compute the stages in a ``lax.fori_loop`` instead of unrolling them, so the
            vector field appears once in the compiled program instead of once per stage. Same
            steps, same values; it cuts compile time for large vector fields at a small cost
            per step.

    Example (Ralston's third-order method with an embedded second-order estimate)::

        ralston3 = ode_jax.RungeKutta(
            "ralston3", order=3, c=[0, 1/2, 3/4, 1],
            a=[[1/2], [0, 3/4], [2/9, 1/3, 4/9]],
            b=[2/9, 1/3, 4/9, 0], b_err=[2/9 - 7/24, 1/3 - 1/4, 4/9 - 1/3, -1/8])
    """

    name: str = eqx.field(static=True)
    order: int = eqx.field(static=True)
    c: tuple = eqx.field(static=True)
    a: tuple = eqx.field(static=True)
    b: tuple = eqx.field(static=True)
    b_err: tuple | None = eqx.field(static=True, default=None)
    dense: tuple | None = eqx.field(static=True, default=None)
    stage_loop: bool = eqx.field(static=True, default=False)

    def __post_init__(self):
        name = self.name
        if not isinstance(name, str) or not name:
            raise ValueError(f"RungeKutta: name must be a non-empty string, got {name!r}")
        if isinstance(self.order, bool) or not isinstance(self.order, (int, np.integer)):
            raise ValueError(f"RungeKutta {name!r}: order must be an int, got {self.order!r}")
        if self.order < 1:
            raise ValueError(f"RungeKutta {name!r}: order must be >= 1, got {self.order}")
        c = _floats(self.c, "c", name)
        s = c.shape[0] if c.ndim == 1 else 0
        if s < 1:
            raise ValueError(f"RungeKutta {name!r}: c must be a non-empty 1-d sequence")
        if c[0] != 0.0:
            raise ValueError(f"RungeKutta {name!r}: c[0] must be 0 (explicit), got {c[0]}")
        a = _lower_rows(self.a, s, name)
        b = _floats(self.b, "b", name)
        if b.shape != (s,):
            raise ValueError(f"RungeKutta {name!r}: b has {b.size} weights for {s} stages")
        for i in range(1, s):
            if abs(sum(a[i]) - c[i]) > _TOL:
                raise ValueError(
                    f"RungeKutta {name!r}: row {i} of a sums to {sum(a[i])!r}, but c[{i}] = "
                    f"{c[i]!r} (each row must sum to its node)"
                )
        for k in range(1, int(self.order) + 1):
            got = float(np.dot(b, c ** (k - 1)))
            if abs(got - 1 / k) > _TOL:
                raise ValueError(
                    f"RungeKutta {name!r}: the weights b fail the order-{k} quadrature "
                    f"condition b . c**{k - 1} = 1/{k} (got {got!r}), so the method cannot "
                    f"have order {self.order}"
                )
        b_err = None
        if self.b_err is not None:
            b_err = _floats(self.b_err, "b_err", name)
            if b_err.shape != (s,):
                raise ValueError(
                    f"RungeKutta {name!r}: b_err has {b_err.size} weights for {s} stages"
                )
            if abs(b_err.sum()) > _TOL:
                raise ValueError(
                    f"RungeKutta {name!r}: b_err must sum to 0 (it is b minus the embedded "
                    f"weights, both summing to 1), got {b_err.sum()!r}"
                )
            if not np.any(b_err != 0):
                raise ValueError(f"RungeKutta {name!r}: b_err is all zeros (no error estimate)")
        self.c = tuple(float(x) for x in c)
        self.a = a
        self.b = tuple(float(x) for x in b)
        self.b_err = None if b_err is None else tuple(float(x) for x in b_err)
        if self.dense is None:
            if self.fsal:
                dense = _hermite_dense(b)
            elif b_err is None:
                dense = b[:, None]
            else:
                raise ValueError(
                    f"RungeKutta {name!r}: an adaptive method that is not FSAL needs its own "
                    "dense output (pass dense=, shape (stages, degree))"
                )
        else:
            dense = _floats(self.dense, "dense", name)
            if dense.ndim != 2 or dense.shape[0] != s:
                raise ValueError(
                    f"RungeKutta {name!r}: dense must have shape (stages, degree) = ({s}, ...), "
                    f"got {dense.shape}"
                )
            worst = np.max(np.abs(dense.sum(axis=1) - b))
            if worst > _TOL:
                raise ValueError(
                    f"RungeKutta {name!r}: the rows of dense must sum to b (the dense output "
                    f"must end at the step's y1); off by up to {worst:.3g}"
                )
        self.dense = tuple(tuple(float(x) for x in row) for row in dense)
        self.stage_loop = bool(self.stage_loop)

    # -- properties ----------------------------------------------------------------------

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

    # -- the solver interface --------------------------------------------------------------

    def init(self, f, t0, y0, args, f0=None):
        """State: FSAL methods carry f(t, y) as ``(f0, have_f0)``; others carry nothing.

        A looped FSAL method not handed f0 evaluates it inside its first step (``have_f0`` is
        then a traced flag), which keeps f out of the program outside the loop: every backward
        solve of the continuous adjoint is such a solve.
        """
        zero = jnp.asarray(0, jnp.int32)
        if not self.fsal:
            return None, zero
        if f0 is not None:
            return (f0, None), zero
        if self.loops_stages:
            return (jax.tree.map(jnp.zeros_like, y0), jnp.asarray(False)), zero
        return (f(t0, y0, args), None), jnp.asarray(1, jnp.int32)

    def step(self, f, t, y, dt, args, state):
        f0, have_f0 = (None, None) if state is None else state
        y1, y_err, ks = rk_step(self, f, t, y, dt, args, f0, have_f0)
        nfe = jnp.asarray(self.evals_per_step, jnp.int32)
        if have_f0 is not None:
            nfe = nfe + (~have_f0).astype(jnp.int32)
        if state is None:
            new_state = None
        else:
            new_state = (ks[-1], None if have_f0 is None else jnp.asarray(True))
        return y1, y_err, (y, ks, dt), new_state, nfe

    def interpolate(self, dense_info, theta):
        y0, ks, dt = dense_info
        return dense_eval(self, y0, ks, dt, theta)

    def interpolate_vjp(self, dense_info, theta, ct):
        # The dense output is linear in (y0, ks): y0 gets ct, k_i gets dt w_i(theta) ct, and
        # theta gets <ct, dt sum_i w_i'(theta) k_i>; no forward evaluation needed.
        y0, ks, dt = dense_info
        w = dense_weights(self, theta)
        dw = dense_weights(self, theta, derivative=True)
        ct_ks = [
            jax.tree.map(lambda c, k, wi=wi: (jnp.asarray(dt) * wi).astype(k.dtype) * c, ct, k)
            for wi, k in zip(w, ks)
        ]
        ct_theta = sum(
            jnp.sum(jnp.real((jnp.asarray(dt) * dwi).astype(k.dtype) * c * k)).astype(
                jnp.result_type(theta)
            )
            for dwi, k in zip(dw, ks)
            if not (isinstance(dwi, float) and dwi == 0.0)
            for c, k in zip(jax.tree.leaves(ct), jax.tree.leaves(k))
        )
        return (ct, ct_ks, jnp.zeros_like(jnp.asarray(dt))), jnp.asarray(ct_theta).astype(
            jnp.result_type(theta)
        )

    def select_state(self, accept, old_state, new_state, dense_info):
        if old_state is None:
            return None
        # After a rejection the next step starts from the same (t, y), whose f is ks[0].
        ks = dense_info[1]
        f0 = tree_where(accept, new_state[0], ks[0])
        return f0, (None if old_state[1] is None else jnp.asarray(True))

    def looped(self) -> RungeKutta:
        return looped(self)

    # -- the discrete adjoint: stage by stage ---------------------------------------------

    def _n_needed(self):
        # An FSAL method's last stage feeds only the dense output (its weight in b is zero
        # and no other stage uses it): a step with no output time inside it skips it.
        return self.stages - 1 if self.fsal else self.stages

    def _restart(self, f, t, y, args, saved):
        # f(t, y) evaluated here, not a traced placeholder: the stage loop of a looped method
        # then has static bounds (which reverse mode needs, see fixed_step).
        if not self.fsal:
            return None, jnp.asarray(0, jnp.int32)
        return (f(t, y, args), None), jnp.asarray(1, jnp.int32)

    def recompute(self, f, t, y, dt, args, saved, with_dense):
        n_eval = jnp.where(with_dense, self.stages, self._n_needed())
        y1, ks = _stages_stacked(self, f, t, y, dt, args, n_eval)
        info = (y, [jax.tree.map(lambda k, i=i: k[i], ks) for i in range(self.stages)], dt)
        return y1, info, None, n_eval.astype(jnp.int32)

    def linearize_step(self, f, t, y, dt, args, saved, with_dense, memory=None):
        """With unrolled stages (the default layout), ``jax.vjp`` of the whole step: the
        backward pass then reuses each stage's forward work instead of recomputing the stages
        first. That keeps one step's stage intermediates alive; when they would take more than
        ``memory`` bytes, and for looped methods (whose programs hold one copy of f), the
        stages are recomputed and walked back by hand (:meth:`recompute`, :meth:`step_vjp`).
        Benchmark (a): 1.18 -> 0.81 ms per step."""
        last_if = with_dense if self.fsal else None

        # f behind one nested jit: tracing caches it, so f and its linearisation are traced
        # once for all stages instead of once per stage (XLA inlines the calls: same program).
        # ODE-Net block, discrete gradient: trace 0.54 -> 0.31 s (benchmarks.nested_jit).
        fj = jax.jit(lambda t_, y_, a_: f(t_, y_, a_))

        def run(y_, a_, t_):
            y1, _, ks = rk_step(self, fj, t_, y_, dt, a_, None, last_if=last_if)
            return y1, ks

        # What the step's VJP keeps is about one VJP of f per stage: sized from an abstract
        # trace of one, so that nothing enters the program when the step is recomputed instead
        # (an unused VJP would still run any callback in f, and lengthen compilation).
        if self.loops_stages or (
            memory is not None
            and (
                memory == 0
                or self.stages * _residual_bytes(lambda y_, a_, t_: f(t_, y_, a_), (y, args, t))
                > memory
            )
        ):
            return super().linearize_step(f, t, y, dt, args, saved, with_dense)
        (_, ks), vjp = jax.vjp(run, y, args, t)
        n_eval = jnp.where(with_dense, self.stages, self._n_needed()).astype(jnp.int32)

        def pull(ct_y1, ct_saved1, ct_dense):
            ct_y0, ct_ks, _ = ct_dense
            ct_y, ct_a, ct_t = vjp((ct_y1, _stage_cotangents(ct_ks, ks)))
            return _add(ct_y, ct_y0), None, ct_a, ct_t, n_eval

        return (y, ks, dt), pull, n_eval

    def step_vjp(
        self, f, t, y, dt, args, saved, dense_info, ct_y1, ct_saved1, ct_dense, with_dense
    ):
        """Stages in a ``fori_loop`` backwards, so f's VJP appears once in the program and
        only one stage's intermediates are alive at a time."""
        n_eval = jnp.where(with_dense, self.stages, self._n_needed())
        s = self.stages
        a_mat, b_vec, c_vec = stage_matrices(self, jnp.result_type(t, dt))
        ks = _stack(dense_info[1])
        ct_y0, ct_ks, _ = ct_dense
        ct_ks = _stack(_stage_cotangents(ct_ks, dense_info[1]))
        ct_ks = _add_outer(ct_ks, dt * b_vec, ct_y1)  # y1 = y + dt * sum_i b_i k_i

        def body(r, carry):
            i = s - 1 - r
            ct_ks, ct_y, ct_a, ct_t = carry
            yi = _axpy(y, dt, combine(a_mat[i], ks))
            _, pull = jax.vjp(lambda y_, a_, t_: f(t_, y_, a_), yi, args, t + c_vec[i] * dt)
            g_yi, g_a, g_t = pull(jax.tree.map(lambda k: k[i], ct_ks))
            ct_ks = _add_outer(ct_ks, dt * a_mat[i], g_yi)  # y_i = y + dt * sum_j a_ij k_j
            return ct_ks, _add(ct_y, g_yi), _add(ct_a, g_a), ct_t + g_t

        zero_a = jax.tree.map(jnp.zeros_like, args)
        init = (ct_ks, _add(ct_y1, ct_y0), zero_a, jnp.zeros((), jnp.result_type(t)))
        _, ct_y, ct_a, ct_t = jax.lax.fori_loop(s - n_eval, s, body, init)
        return ct_y, None, ct_a, ct_t, n_eval.astype(jnp.int32)


def _stage_cotangents(ct_ks, ks):
    """The dense output's cotangents of the stages, zeros where it gave None."""
    return [jax.tree.map(jnp.zeros_like, k) if c is None else c for c, k in zip(ct_ks, ks)]


def _residual_bytes(fn, primals) -> int:
    """Bytes of the intermediates ``jax.vjp(fn, *primals)`` keeps for its backward pass (the
    primals themselves, also kept, are not counted), from an abstract trace: nothing runs."""

    def residuals(*xs):
        inputs = {id(x) for x in jax.tree.leaves(xs)}
        return [r for r in jax.tree.leaves(jax.vjp(fn, *xs)[1]) if id(r) not in inputs]

    kept = jax.eval_shape(residuals, *primals)
    return sum(math.prod(r.shape) * r.dtype.itemsize for r in kept)


def _add(a, b):
    return jax.tree.map(lambda x, y: x + y, a, b)


def _axpy(y, dt, x):
    return jax.tree.map(lambda yl, xl: yl + jnp.asarray(dt).astype(yl.dtype) * xl, y, x)


def _stack(trees):
    return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def _add_outer(stacked, w, tree):
    """``stacked[i] += w[i] * tree`` for every stage i, leaf by leaf."""
    return jax.tree.map(
        lambda c, g: c + w.astype(g.dtype).reshape((-1,) + (1,) * g.ndim) * g[None], stacked, tree
    )


@functools.cache
def looped(method: RungeKutta) -> RungeKutta:
    """The same method with its stages in a loop (one object per method, so jit caches hit)."""
    if method.stage_loop:
        return method
    return RungeKutta(
        method.name, method.order, method.c, method.a, method.b, method.b_err, method.dense, True
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


def rk_step(method: RungeKutta, f, t, y, dt, args, f0, have_f0=None, last_if=None):
    """One explicit RK step from (t, y) with step dt.

    Args:
        f0: f(t, y, args), used as the first stage (FSAL methods carry it between steps); if None
            it is evaluated here.
        have_f0: for a method that loops its stages, an optional traced bool: when False, ``f0``
            is a placeholder and the first stage is evaluated inside the stage loop.
        last_if: for an FSAL method with unrolled stages, an optional bool (traced, or
            Python False): the last stage (f at the new state, which only the error estimate
            and the dense output use) is evaluated only when it holds, else left zero (y_err
            is then not meaningful).

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
        ti = t + method.c[i] * dt
        if method.fsal and i == method.stages - 1:
            y1 = yi  # the last stage is evaluated at the new state itself
            if last_if is False:  # known not to be needed: not in the program at all
                ks.append(jax.tree.map(jnp.zeros_like, yi))
                continue
            if last_if is not None:
                ks.append(
                    jax.lax.cond(
                        last_if,
                        lambda c: f(*c),
                        lambda c: jax.tree.map(jnp.zeros_like, c[1]),
                        (ti, yi, args),
                    )
                )
                continue
        ks.append(f(ti, yi, args))
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
    return jnp.asarray(a, dtype), jnp.asarray(method.b, dtype), jnp.asarray(method.c, dtype)


def combine(w, stacked):
    """sum_i w[i] * stacked[i] for every leaf of a pytree of (stages, ...) arrays."""
    return jax.tree.map(lambda k: jnp.tensordot(w.astype(k.dtype), k, axes=1), stacked)


def _stages_stacked(method: RungeKutta, f, t, y, dt, args, n_eval, start=0, ks=None):
    """Stages ``start .. n_eval - 1`` in a ``fori_loop`` into a stacked (stages, ...) buffer
    (the others stay as given, zeros by default); returns ``(y1, ks)``."""
    s = method.stages
    a_mat, b_vec, c_vec = stage_matrices(method, jnp.result_type(t, dt))
    if ks is None:
        ks = jax.tree.map(lambda x: jnp.zeros((s,) + x.shape, x.dtype), y)

    def body(i, ks):
        k = f(t + c_vec[i] * dt, _axpy(y, dt, combine(a_mat[i], ks)), args)
        return jax.tree.map(lambda buf, v: buf.at[i].set(v.astype(buf.dtype)), ks, k)

    ks = jax.lax.fori_loop(start, n_eval, body, ks)
    return _axpy(y, dt, combine(b_vec, ks)), ks


def _rk_step_looped(method: RungeKutta, f, t, y, dt, args, f0, have_f0=None):
    """:func:`rk_step` with the stages in a ``fori_loop`` over a stacked (stages, ...) buffer.

    The loop starts at stage 1 when f0 is known, else at stage 0 (whose input is y itself:
    row 0 of the tableau is zero, and the buffer holds only finite zeros at that point).
    """
    s = method.stages
    if f0 is None:
        start, ks = 0, None
    else:
        ks = jax.tree.map(lambda k: jnp.zeros((s,) + k.shape, k.dtype).at[0].set(k), f0)
        start = 1 if have_f0 is None else jnp.where(have_f0, 1, 0)
    _, ks = _stages_stacked(method, f, t, y, dt, args, s, start, ks)
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
