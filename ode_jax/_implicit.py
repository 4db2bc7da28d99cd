"""Solvers for stiff problems: ESDIRK methods with a simplified Newton iteration (kvaerno3,
kvaerno5) and a Rosenbrock method (rodas5).

Both work on the state flattened to one vector (``ravel_pytree``), with the exact dense
Jacobian from ``jax.jacfwd`` (or the user's, ``odeint(..., jacobian=fn)``) and its LU
factorisation (``jax.scipy.linalg.lu_factor``):
meant for the small-to-medium stiff systems of chemistry, circuits and stiff neural ODEs.

ESDIRK (Kvaerno 2004): an explicit first stage, then implicit stages with one diagonal
coefficient gamma, stiffly accurate (y1 is the last stage), so the last stage derivative is
f(t + h, y1) and cubic Hermite interpolation gives the dense output. Each implicit stage
    Z = base + h gamma f(t_i, Z)
is solved by a simplified Newton iteration with the matrix I - h gamma J, J the Jacobian at
the step's start, factorised once per step and shared by every stage; J itself is reused
across steps while the iteration converges fast (contraction rate below ``reuse_rate``). A
step whose Newton iteration diverges or does not converge in ``newton_max_iter`` iterations is
rejected (the step shrinks), with a fresh Jacobian next time. The error estimate is filtered
through (I - h gamma J)^-1, as in Hairer and Wanner's codes, so it stays meaningful on stiff
components.

The discrete adjoint differentiates the converged stage equations (implicit function theorem),
never the Newton iterations: with the stage Jacobian J_i, each stage's cotangent is solved
through (I - h gamma J_i)^T.

Rosenbrock (Rodas5, Di Marzo 1993, coefficients as in Hairer & Wanner's RODAS form): eight
linearly implicit stages with W = I / (h gamma) - J, one Jacobian, one df/dt and one LU per
step, an embedded error estimate (the last stage) and its own fourth-order dense output. Its
step is an explicit function of (t, y), so the discrete adjoint differentiates it directly.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.scipy.linalg as jsl
import numpy as np
from jax.flatten_util import ravel_pytree

from ._solution import RESULTS
from ._solver import AbstractSolver, all_finite, tree_where

_I32 = jnp.int32


def _flat_field(f, args, unravel):
    """f on the flat state: (t, y_flat) -> f_flat."""

    def g(t, yv):
        return ravel_pytree(f(t, unravel(yv), args))[0].astype(yv.dtype)

    return g


def _jacobian(f, t, yv, args, unravel):
    """The Jacobian of f w.r.t. y at (t, y) on the flat state: the user's (odeint's
    ``jacobian=``) when given, else forward-mode AD (exact)."""
    if getattr(f, "has_jacobian", False):
        n = yv.shape[0]
        return jnp.asarray(f.jacobian(t, unravel(yv), args)).astype(yv.dtype).reshape(n, n)
    return jax.jacfwd(lambda v: _flat_field(f, args, unravel)(t, v))(yv)


def _scaled_norm(v, ref, rtol, atol):
    scale = atol.astype(v.dtype) + rtol.astype(v.dtype) * jnp.abs(ref)
    return jnp.sqrt(jnp.mean(jnp.square(v / scale)))


def _lu_ok(lu):
    piv = jnp.diagonal(lu[0])
    return all_finite(lu[0]) & (jnp.min(jnp.abs(piv)) > 0)


def _hermite(y0, f0, y1, f1, dt, theta):
    """Cubic Hermite interpolation on one step (flat vectors)."""
    h00 = (1 + 2 * theta) * (1 - theta) ** 2
    h10 = theta * (1 - theta) ** 2
    h01 = theta**2 * (3 - 2 * theta)
    h11 = theta**2 * (theta - 1)
    return h00 * y0 + h10 * dt * f0 + h01 * y1 + h11 * dt * f1


class ESDIRK(AbstractSolver):
    """A stiffly accurate ESDIRK method with an explicit first stage (see the module docs).

    Use them by name (``solver="kvaerno5"``) or as ``ode_jax.SOLVERS["kvaerno5"]``;
    ``dataclasses.replace`` changes the Newton settings (``newton_max_iter``,
    ``newton_kappa``: the stopping tolerance as a fraction of rtol/atol, ``reuse_rate``: the
    contraction rate below which the Jacobian is kept for the next step).
    """

    name: str = eqx.field(static=True)
    order: int = eqx.field(static=True)
    gamma: float = eqx.field(static=True)
    c: tuple = eqx.field(static=True)
    a: tuple = eqx.field(static=True)  # (s, s) lower triangular incl. the diagonal gamma
    b_err: tuple = eqx.field(static=True)
    predictor: tuple = eqx.field(static=True)  # (s, s) strictly lower: initial stage guesses
    newton_max_iter: int = eqx.field(static=True, default=10)
    newton_kappa: float = eqx.field(static=True, default=0.01)
    reuse_rate: float = eqx.field(static=True, default=0.2)

    needs_tolerances = True
    uses_jacobian = True
    differentiable_steps = False  # a Newton iteration of run-time length per stage

    @property
    def adaptive(self) -> bool:
        return True

    @property
    def stages(self) -> int:
        return len(self.c)

    def init(self, f, t0, y0, args, f0=None, tols=None):
        yv, unravel = ravel_pytree(y0)
        nfe = jnp.asarray(0, _I32)
        if f0 is None:
            f0v = _flat_field(f, args, unravel)(t0, yv)
            nfe = nfe + 1
        else:
            f0v = ravel_pytree(f0)[0].astype(yv.dtype)
        state = dict(
            f0=f0v,
            jac=jnp.zeros((yv.shape[0], yv.shape[0]), yv.dtype),
            fresh=jnp.asarray(False),  # whether jac may be reused at the current (t, y)
            # (Without tolerances, as when the discrete adjoint asks how the initial state
            # depends on y0, placeholders: the tolerances are constants of the solve.)
            rtol=jnp.asarray(tols.rtol) if tols is not None else jnp.zeros((), jnp.result_type(t0)),
            atol=jnp.asarray(tols.atol) if tols is not None else jnp.zeros((), jnp.result_type(t0)),
            num_jacobians=jnp.asarray(0, _I32),
            num_lu=jnp.asarray(0, _I32),
            failed=jnp.asarray(0, _I32),
        )
        return state, nfe

    def counters(self, state):
        return {"num_jacobians": state["num_jacobians"], "num_lu": state["num_lu"]}

    def failure(self, state):
        return state["failed"]

    def _matrices(self, dtype):
        a = np.asarray(self.a)
        strict = np.tril(a, -1)
        return (
            jnp.asarray(strict, dtype),
            jnp.asarray(self.predictor, dtype),
            jnp.asarray(self.c, dtype),
            jnp.asarray(a[-1], dtype),
            jnp.asarray(self.b_err, dtype),
        )

    def _stages(self, f, t, yv, dt, args, unravel, f0v, lu, rtol, atol):
        """All stage derivatives (s, n) by simplified Newton; (ks, nfe, failed, max rate)."""
        s, n = self.stages, yv.shape[0]
        dtype = yv.dtype
        a_low, pred, c, _, _ = self._matrices(dtype)
        g = self.gamma
        hg = (dt * g).astype(dtype)
        fl = _flat_field(f, args, unravel)
        kappa = self.newton_kappa

        def stage(i, carry):
            ks, nfe, failed, rate = carry
            base = yv + dt.astype(dtype) * (a_low[i] @ ks)
            z0 = yv + dt.astype(dtype) * (pred[i] @ ks)
            ti = t + c[i] * dt

            def cond(c2):
                z, prev, it, done, bad, _, _ = c2
                return ~done & ~bad & (it < self.newton_max_iter)

            def body(c2):
                z, prev, it, done, bad, r, nf = c2
                resid = z - base - hg * fl(ti, z)
                dz = -jsl.lu_solve(lu, resid)
                z = z + dz
                ndz = _scaled_norm(dz, z, rtol, atol)
                theta = jnp.where(it > 0, ndz / jnp.maximum(prev, 1e-300), 0.0)
                eta = theta / jnp.maximum(1 - theta, 1e-300)
                done = (ndz <= kappa) | ((it > 0) & (theta < 1) & (eta * ndz <= kappa))
                bad = ~jnp.isfinite(ndz) | ((it > 0) & (theta >= 1) & ~done)
                return z, ndz, it + 1, done, bad, jnp.maximum(r, theta), nf + 1

            init = (z0, jnp.asarray(jnp.inf, dtype), 0, jnp.asarray(False),
                    jnp.asarray(False), jnp.zeros((), dtype), jnp.asarray(0, _I32))  # fmt: skip
            z, _, _, done, bad, r, nf = jax.lax.while_loop(cond, body, init)
            k = (z - base) / hg
            ks = ks.at[i].set(k)
            return ks, nfe + nf, failed | bad | ~done, jnp.maximum(rate, r)

        ks = jnp.zeros((s, n), dtype).at[0].set(f0v)
        init = (ks, jnp.asarray(0, _I32), jnp.asarray(False), jnp.zeros((), dtype))
        return jax.lax.fori_loop(1, s, stage, init)

    def step(self, f, t, y, dt, args, state):
        yv, unravel = ravel_pytree(y)
        dtype = yv.dtype
        n = yv.shape[0]
        jac = jax.lax.cond(
            state["fresh"],
            lambda: state["jac"],
            lambda: _jacobian(f, t, yv, args, unravel),
        )
        n_jac = state["num_jacobians"] + (~state["fresh"]).astype(_I32)
        m = jnp.eye(n, dtype=dtype) - (dt * self.gamma).astype(dtype) * jac
        lu = jsl.lu_factor(m)
        ok_lu = _lu_ok(lu)
        rtol, atol = state["rtol"], state["atol"]
        ks, nfe, failed, rate = self._stages(
            f, t, yv, dt, args, unravel, state["f0"], lu, rtol, atol
        )
        _, _, _, b, b_err = self._matrices(dtype)
        y1v = yv + dt.astype(dtype) * (b @ ks)
        err = jsl.lu_solve(lu, dt.astype(dtype) * (b_err @ ks))  # filtered estimate
        bad = failed | ~ok_lu | ~all_finite(y1v)
        # A failed Newton iteration is a rejection: a large finite error shrinks the step.
        scale = atol.astype(dtype) + rtol.astype(dtype) * jnp.abs(yv)
        err = jnp.where(bad, 1e6 * scale, err)
        y1v = jnp.where(bad, yv, y1v)
        code = jnp.where(~ok_lu, RESULTS.singular, RESULTS.newton_failed)
        new_state = dict(
            f0=ks[-1],
            jac=jac,
            fresh=~bad & (rate < self.reuse_rate),
            rtol=rtol,
            atol=atol,
            num_jacobians=n_jac,
            num_lu=state["num_lu"] + 1,
            failed=jnp.where(bad, code, 0).astype(_I32),
        )
        info = (y, unravel(state["f0"]), unravel(y1v), unravel(ks[-1]), dt)
        return unravel(y1v), unravel(err), info, new_state, nfe

    def select_state(self, accept, old_state, new_state, dense_info):
        # The Jacobian was taken at the step's start, which is the next start after a
        # rejection too: keep it unless the Newton iteration failed with it.
        kept = dict(old_state)
        kept["jac"] = new_state["jac"]
        kept["fresh"] = new_state["failed"] == 0
        chosen = tree_where(accept, new_state, kept)
        for key in ("num_jacobians", "num_lu", "failed"):
            chosen[key] = new_state[key]  # work done and failures count either way
        return chosen

    def interpolate(self, dense_info, theta):
        y0, f0, y1, f1, dt = dense_info
        return jax.tree.map(
            lambda a, fa, b, fb: _hermite(
                a, fa, b, fb, dt.astype(a.dtype), jnp.asarray(theta).astype(a.dtype)
            ),
            y0,
            f0,
            y1,
            f1,
        )

    # -- the discrete adjoint: implicit function theorem on the converged stages ----------

    def checkpoint_state(self, state):
        return (state["rtol"], state["atol"])

    def _restart(self, f, t, y, args, saved):
        from ._loop import Tolerances

        rtol, atol = saved
        return self.init(f, t, y, args, None, tols=Tolerances(rtol, atol))

    def step_vjp(
        self, f, t, y, dt, args, saved, dense_info, ct_y1, ct_saved1, ct_dense, with_dense
    ):
        yv, unravel = ravel_pytree(y)
        dtype = yv.dtype
        n, s = yv.shape[0], self.stages
        # Stage derivatives of the (converged) forward step: recover them from the dense info
        # and a recompute (the recompute is what the backward walk already did).
        state, _ = self._restart(f, t, y, args, saved)
        ks, nfe, _, _ = self._stages(
            f, t, yv, dt, args, unravel, state["f0"],
            jsl.lu_factor(jnp.eye(n, dtype=dtype)
                          - (dt * self.gamma).astype(dtype) * _jacobian(
                              f, t, yv, args, unravel)),
            saved[0], saved[1],
        )  # fmt: skip
        a_low, _, c, b, _ = self._matrices(dtype)
        hd = dt.astype(dtype)
        hg = (dt * self.gamma).astype(dtype)
        ct_y1v = ravel_pytree(ct_y1)[0].astype(dtype)
        ct_y0_d, ct_f0_d, ct_y1_d, ct_f1_d = (
            ravel_pytree(x)[0].astype(dtype) for x in ct_dense[:4]
        )
        # Cotangents of the stage derivatives k_i: from y1 = y0 + h b.k and the dense output
        # (which reads f0 = k_0, y1 and f1 = k_{s-1}).
        ct_y1_total = ct_y1v + ct_y1_d
        ct_k = jnp.outer(hd * b, ct_y1_total)
        ct_k = ct_k.at[0].add(ct_f0_d).at[s - 1].add(ct_f1_d)
        fl = _flat_field(f, args, unravel)

        def flat_f(tt, v, a):
            return ravel_pytree(f(tt, unravel(v), a))[0].astype(dtype)

        def body(r, carry):
            i = s - 1 - r
            ct_k, ct_y, ct_a, ct_t = carry
            z = yv + hd * (a_low[i] @ ks) + hg * ks[i]  # the converged stage value
            ti = t + c[i] * dt
            ji = jax.jacfwd(lambda v: fl(ti, v))(z)
            # k_i = f(t_i, Z_i), Z_i = y0 + h sum_j a_ij k_j + h gamma k_i:
            # lambda = (I - h gamma J_i)^-T ct_k_i, then pull lambda through f.
            lam = jnp.linalg.solve((jnp.eye(n, dtype=dtype) - hg * ji).T, ct_k[i])
            _, pull = jax.vjp(flat_f, ti, z, args)
            g_t, g_z, g_a = pull(lam)
            ct_k = ct_k + jnp.outer(hd * a_low[i], g_z)
            return ct_k, ct_y + g_z, jax.tree.map(jnp.add, ct_a, g_a), ct_t + g_t

        zero_a = jax.tree.map(jnp.zeros_like, args)
        init = (ct_k, ct_y1_total + ct_y0_d, zero_a, jnp.zeros((), jnp.result_type(t)))
        # Stage 0 is explicit: k_0 = f(t, y0).
        ct_k, ct_y, ct_a, ct_t = jax.lax.fori_loop(0, s - 1, body, init)
        _, pull0 = jax.vjp(flat_f, t, yv, args)
        g_t0, g_y0, g_a0 = pull0(ct_k[0])
        ct_y = ct_y + g_y0
        ct_a = jax.tree.map(jnp.add, ct_a, g_a0)
        ct_t = ct_t + g_t0
        ct_saved = jax.tree.map(jnp.zeros_like, saved)  # the tolerances get no cotangent
        return unravel(ct_y), ct_saved, ct_a, ct_t, nfe + 2 * s


class Rosenbrock(AbstractSolver):
    """A Rosenbrock method in Hairer & Wanner's form (see the module docs); ``rodas5``."""

    name: str = eqx.field(static=True)
    order: int = eqx.field(static=True)
    gamma: float = eqx.field(static=True)
    alpha: tuple = eqx.field(static=True)  # (s, s) stage input coefficients a_ij
    cmat: tuple = eqx.field(static=True)  # (s, s) coefficients C_ij of earlier stages
    c: tuple = eqx.field(static=True)  # stage times
    d: tuple = eqx.field(static=True)  # df/dt coefficients
    dense: tuple = eqx.field(static=True)  # (3, s) dense-output coefficients

    uses_jacobian = True

    @property
    def adaptive(self) -> bool:
        return True

    def init(self, f, t0, y0, args, f0=None):
        state = dict(
            num_jacobians=jnp.asarray(0, _I32),
            num_lu=jnp.asarray(0, _I32),
            failed=jnp.asarray(0, _I32),
        )
        return state, jnp.asarray(0, _I32)

    def counters(self, state):
        return {"num_jacobians": state["num_jacobians"], "num_lu": state["num_lu"]}

    def failure(self, state):
        return state["failed"]

    def select_state(self, accept, old_state, new_state, dense_info):
        return new_state

    def step(self, f, t, y, dt, args, state):
        yv, unravel = ravel_pytree(y)
        dtype = yv.dtype
        n = yv.shape[0]
        s = len(self.c)
        fl = _flat_field(f, args, unravel)
        hd = dt.astype(dtype)
        jac = _jacobian(f, t, yv, args, unravel)
        f0v, f_t = jax.jvp(lambda tt: fl(tt, yv), (t,), (jnp.ones_like(t),))
        w = jnp.eye(n, dtype=dtype) / (hd * self.gamma) - jac
        lu = jsl.lu_factor(w)
        ok_lu = _lu_ok(lu)
        alpha = jnp.asarray(self.alpha, dtype)
        cmat = jnp.asarray(self.cmat, dtype)
        c = jnp.asarray(self.c, jnp.result_type(t))
        d = jnp.asarray(self.d, dtype)

        def stage(i, ks):
            u = yv + alpha[i] @ ks
            fu = jnp.where(i == 0, f0v, fl(t + c[i] * dt, u))
            rhs = fu + hd * d[i] * f_t.astype(dtype) + (cmat[i] @ ks) / hd
            return ks.at[i].set(jsl.lu_solve(lu, rhs))

        ks = jax.lax.fori_loop(0, s, stage, jnp.zeros((s, n), dtype))
        # Stiffly accurate: y1 = y0 + sum of the stage-6 inputs and the last three increments.
        y1v = yv + alpha[s - 1] @ ks + ks[s - 1]
        err = ks[s - 1]
        bad = ~ok_lu | ~all_finite(y1v)
        scale = jnp.abs(yv) + 1.0
        err = jnp.where(bad, 1e6 * scale, err)
        y1v = jnp.where(bad, yv, y1v)
        hmat = jnp.asarray(self.dense, dtype)
        new_state = dict(
            num_jacobians=state["num_jacobians"] + 1,
            num_lu=state["num_lu"] + 1,
            failed=jnp.where(bad, RESULTS.singular, 0).astype(_I32),
        )
        hk = hmat @ ks
        info = (y, unravel(y1v), unravel(hk[0]), unravel(hk[1]), unravel(hk[2]))
        return unravel(y1v), unravel(err), info, new_state, jnp.asarray(s + 1, _I32)

    def interpolate(self, dense_info, theta):
        def leaf(y0, y1, h1, h2, h3):
            th = jnp.asarray(theta).astype(y0.dtype)
            return (1 - th) * y0 + th * (y1 + (1 - th) * (h1 + th * (h2 + th * h3)))

        return jax.tree.map(leaf, *dense_info)


def _kvaerno3() -> ESDIRK:
    # gamma: the root in (0, 1) of 6 g^3 - 18 g^2 + 9 g - 1 = 0 (L-stable, order 3).
    roots = np.roots([6.0, -18.0, 9.0, -1.0])
    g = float(min(r.real for r in roots if abs(r.imag) < 1e-12 and 0.4 < r.real < 0.5))
    a31 = (-4 * g**2 + 6 * g - 1) / (4 * g)
    a32 = (-2 * g + 1) / (4 * g)
    a41 = (6 * g - 1) / (12 * g)
    a42 = -1 / ((24 * g - 12) * g)
    a43 = (-6 * g**2 + 6 * g - 1) / (6 * g - 3)
    th = 1 / (2 * g)
    a = [[0, 0, 0, 0], [g, g, 0, 0], [a31, a32, g, 0], [a41, a42, a43, g]]
    pred = [[0, 0, 0, 0], [1.0, 0, 0, 0], [1 - th, th, 0, 0], [a31, a32, g, 0]]
    b_err = [a41 - a31, a42 - a32, a43 - g, g]
    return _esdirk("kvaerno3", 3, g, [0.0, 2 * g, 1.0, 1.0], a, b_err, pred)


def _kvaerno5() -> ESDIRK:
    g = 0.26
    rows = [
        [],
        [g],
        [0.13, 0.84033320996790809],
        [0.22371961478320505, 0.47675532319799699, -0.06470895363112615],
        [0.16648564323248321, 0.10450018841591720, 0.03631482272098715, -0.13090704451073998],
        [0.13855640231268224, 0.0, -0.04245337201752043, 0.02446657898003141,
         0.61943039072480676],
        [0.13659751177640291, 0.0, -0.05496908796538376, -0.04118626728321046,
         0.62993304899016403, 0.06962479448202728],
    ]  # fmt: skip
    a = np.zeros((7, 7))
    for i, r in enumerate(rows):
        a[i, : len(r)] = r
        a[i, i] = g if i else 0.0
    pred_rows = [
        [],
        [1.0],
        [-1.366025403784441, 2.3660254037844357],
        [-0.19650552613122207, 0.8113579546496623, 0.38514757148155954],
        [0.10375304369958693, 0.937994698066431, -0.04174774176601781, 0.0],
        [-0.17281112873898072, 0.6235784481025847, 0.5492326806363959, 0.0, 0.0],
        [*rows[5], g],
    ]
    pred = np.zeros((7, 7))
    for i, r in enumerate(pred_rows):
        pred[i, : len(r)] = r
    embedded = np.zeros(7)
    embedded[:5] = rows[5]
    embedded[5] = g
    b_err = a[6] - embedded
    c = [0.0, 0.52, 1.230333209967908, 0.8957659843500759, 0.43639360985864756, 1.0, 1.0]
    return _esdirk("kvaerno5", 5, g, c, a, b_err, pred)


def _esdirk(name, order, g, c, a, b_err, pred) -> ESDIRK:
    a = np.asarray(a, float)
    # Consistency of the published constants: rows sum to the nodes, stiffly accurate.
    assert np.allclose(a.sum(axis=1), c, atol=1e-10), name
    assert abs(sum(b_err)) < 1e-10, name
    tup = lambda m: tuple(tuple(float(x) for x in row) for row in np.asarray(m, float))  # noqa: E731
    return ESDIRK(
        name, order, float(g), tuple(float(x) for x in c), tup(a),
        tuple(float(x) for x in b_err), tup(pred),
    )  # fmt: skip


def _rodas5() -> Rosenbrock:
    # Di Marzo (1993), in the form of Hairer & Wanner's RODAS (transformed stages).
    a = {
        (2, 1): 2.0,
        (3, 1): 3.040894194418781, (3, 2): 1.041747909077569,
        (4, 1): 2.576417536461461, (4, 2): 1.622083060776640, (4, 3): -0.9089668560264532,
        (5, 1): 2.760842080225597, (5, 2): 1.446624659844071, (5, 3): -0.3036980084553738,
        (5, 4): 0.2877498600325443,
        (6, 1): -14.09640773051259, (6, 2): 6.925207756232704, (6, 3): -41.47510893210728,
        (6, 4): 2.343771018586405, (6, 5): 24.13215229196062,
    }  # fmt: skip
    cm = {
        (2, 1): -10.31323885133993,
        (3, 1): -21.04823117650003, (3, 2): -7.234992135176716,
        (4, 1): 32.22751541853323, (4, 2): -4.943732386540191, (4, 3): 19.44922031041879,
        (5, 1): -20.69865579590063, (5, 2): -8.816374604402768, (5, 3): 1.260436877740897,
        (5, 4): -0.7495647613787146,
        (6, 1): -46.22004352711257, (6, 2): -17.49534862857472, (6, 3): -289.6389582892057,
        (6, 4): 93.60855400400906, (6, 5): 318.3822534212147,
        (7, 1): 34.20013733472935, (7, 2): -14.15535402717690, (7, 3): 57.82335640988400,
        (7, 4): 25.83362985412365, (7, 5): 1.408950972071624, (7, 6): -6.551835421242162,
        (8, 1): 42.57076742291101, (8, 2): -13.80770672017997, (8, 3): 93.98938432427124,
        (8, 4): 18.77919633714503, (8, 5): -31.58359187223370, (8, 6): -6.685968952921985,
        (8, 7): -5.810979938412932,
    }  # fmt: skip
    h = [
        [27.354592673333357, -6.925207756232857, 26.40037733258859, 0.5635230501052979,
         -4.699151156849391, -1.6008677469422725, -1.5306074446748028, -1.3929872940716344],
        [44.19024239501722, 1.3677947663381929e-13, 202.93261852171622, -35.5669339789154,
         -181.91095152160645, 3.4116351403665033, 2.5793540257308067, 2.2435122582734066],
        [-44.0988150021747, -5.755396159656812e-13, -181.26175034586677, 56.99302194811676,
         183.21182741427398, -7.480257918273637, -5.792426076169686, -5.32503859794143],
    ]  # fmt: skip
    s = 8
    alpha = np.zeros((s, s))
    cmat = np.zeros((s, s))
    for (i, j), v in a.items():
        alpha[i - 1, j - 1] = v
    # Stages 7 and 8 start from the stage-6 input plus the increments after it.
    alpha[6, :5] = alpha[5, :5]
    alpha[6, 5] = 1.0
    alpha[7, :5] = alpha[5, :5]
    alpha[7, 5] = alpha[7, 6] = 1.0
    for (i, j), v in cm.items():
        cmat[i - 1, j - 1] = v
    g = 0.19
    c = [0.0, 0.38, 0.3878509998321533, 0.4839718937873840, 0.4570477008819580, 1.0, 1.0, 1.0]
    d = [g, -0.1823079225333714636, -0.319231832186874912, 0.3449828624725343,
         -0.377417564392089818, 0.0, 0.0, 0.0]  # fmt: skip
    tup = lambda m: tuple(tuple(float(x) for x in row) for row in m)  # noqa: E731
    return Rosenbrock("rodas5", 5, g, tup(alpha), tup(cmat), tuple(c), tuple(d), tup(h))


KVAERNO3 = _kvaerno3()
KVAERNO5 = _kvaerno5()
RODAS5 = _rodas5()
