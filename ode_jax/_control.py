"""Error norms, the initial step (Hairer's algorithm) and the PID step-size controller."""

from __future__ import annotations

import dataclasses
import numbers

import jax
import jax.numpy as jnp


def propagates_nonfinite(norm):
    """Mark ``norm`` as returning NaN or inf whenever any element of its input is non-finite.

    :func:`scaled_error` makes every element of its input non-finite where the new state is,
    so with such a norm a finite error alone proves the step finite, and the stepping loop
    skips a separate pass over the state (one reduction less per step in the compiled loop).
    """
    norm.propagates_nonfinite = True
    return norm


@propagates_nonfinite
def rms_norm(tree) -> jax.Array:
    """Root-mean-square over every element of every leaf of a pytree (complex: modulus)."""
    leaves = jax.tree.leaves(tree)
    total = sum(jnp.sum(jnp.real(x * jnp.conj(x))) for x in leaves)
    size = sum(x.size for x in leaves)
    return jnp.sqrt(total / max(size, 1))


def scaled_error(y0, y1, y_err, rtol, atol, norm) -> jax.Array:
    """norm(err / (atol + rtol * max(|y0|, |y1|))): a step is accepted when this is <= 1.

    Each element carries ``y1 - y1`` (zero, or NaN where y1 is not finite), so a non-finite
    new state gives a NaN error under any norm marked :func:`propagates_nonfinite`.
    """

    def scale(e, a, b):
        real = jnp.abs(b).dtype  # tolerances in the state's (real) precision
        tol = atol.astype(real) + rtol.astype(real) * jnp.maximum(jnp.abs(a), jnp.abs(b))
        return (e + (b - b)) / tol.astype(e.dtype)

    return norm(jax.tree.map(scale, y_err, y0, y1))


def initial_step(f, t0, y0, args, f0, order, rtol, atol, norm):
    """Hairer, Norsett & Wanner (1993), Section II.4: one extra evaluation of f.

    Returns the proposed first step size (positive; integration runs forwards in time).
    """
    tdtype = jnp.result_type(t0)

    def tol(y):
        real = jnp.abs(y).dtype
        return atol.astype(real) + jnp.abs(y) * rtol.astype(real)

    scale = jax.tree.map(tol, y0)
    d0 = norm(jax.tree.map(lambda y, s: y / s.astype(y.dtype), y0, scale)).astype(tdtype)
    d1 = norm(jax.tree.map(lambda g, s: g / s.astype(g.dtype), f0, scale)).astype(tdtype)
    small = (d0 < 1e-5) | (d1 < 1e-5)
    h0 = jnp.where(small, 1e-6, 0.01 * d0 / jnp.where(small, 1.0, d1)).astype(tdtype)
    y1 = jax.tree.map(lambda y, g: y + h0.astype(y.dtype) * g, y0, f0)
    f1 = f(t0 + h0, y1, args)
    d2 = (
        norm(jax.tree.map(lambda a, b, s: (a - b) / s.astype(a.dtype), f1, f0, scale)).astype(
            tdtype
        )
        / h0
    )
    max_d = jnp.maximum(d1, d2)
    h1 = jnp.where(
        max_d <= 1e-15,
        jnp.maximum(1e-6, h0 * 1e-3),
        (0.01 / jnp.where(max_d <= 1e-15, 1.0, max_d)) ** (1.0 / order),
    )
    return jnp.minimum(100 * h0, h1.astype(t0.dtype))


# The proportional coefficient of forward solves when ``pcoeff`` is left at None.
FORWARD_PCOEFF = 0.2


@dataclasses.dataclass(frozen=True)
class PIDController:
    """Step-size controller: dt_new = dt * clip(safety * e_n^-(p+i)/k * e_{n-1}^(p/k), ...).

    ``e_n`` is the scaled error of this step and ``k`` the method's order. ``pcoeff=0,
    icoeff=1`` is the classical integral controller (diffrax's, torchdiffeq's and
    jax.experimental.ode's default). The default here (``pcoeff=None``) damps it with
    ``pcoeff=0.2`` in forward solves (Hairer's beta = 0.04 stabilisation, integral gain
    kept) and keeps it plain in the continuous adjoint's backward solves. Measured against
    the integral controller (``python -m benchmarks.controller_study``,
    benchmarks/controller_study.md):

    * Forward, pcoeff=0.2 rejects 9-26% fewer steps on 8 nonstiff test problems and takes
      0.4-2.7% fewer evaluations at rtol 1e-6 and 1e-9 (0.5-1.6% more at 1e-3; 0.9% fewer
      over all six settings), as many on the speed benchmark's neural ODEs, and 1490 against
      1640 on its spiral, whose error changes from step to step at the same step size.
    * Backward, on ReLU MLPs, whose error jumps at the kinks, pcoeff=0.2 moves the evaluation
      counts either way from field to field (the study's three: 25 -> 19, 25 -> 31 and 37 ->
      25 at rtol 1e-3), and on the summed-loss ReLU MLP of tests/test_step_control.py it took
      79 against 43: backward solves keep pcoeff=0 unless it is set.
    * PI controllers with a smaller integral gain (pcoeff=0.3, icoeff=0.4; pcoeff=0.4,
      icoeff=0.3) reject still fewer steps and reach smaller errors, but grow a small first
      step slowly: 104-122 forward evaluations against 68 on benchmark (a).

    Attributes:
        pcoeff, icoeff: proportional and integral coefficients. ``pcoeff=None`` (default):
            0.2 in forward solves, 0 in the continuous adjoint's backward solves.
        factormin, factormax: bounds on dt_new / dt after an accepted step.
        safety: safety factor (< 1). After a rejected step the factor is at most ``safety``.
        observed_order: after two rejections in a row, shrink the step by the order the two
            attempts showed rather than the method's (see :meth:`factor`). None (default):
            in the continuous adjoint's backward solves only, where runs of rejections occur
            (the ODE-Net block's backward NFE 177 -> 147); a forward solve then skips the
            rule's per-step state, which keeps a small system's stepping loop within XLA:CPU's
            one-kernel limit. True: in every solve; False: never.

    As in Hairer's codes (Hairer, Norsett & Wanner 1993, II.4), the step accepted right after a
    rejection does not grow the step size: it avoids runs of reject/accept/reject, and cut the
    total NFE on the forward test problems by 0-13% (raising it on none of the sets).
    """

    pcoeff: float | None = None
    icoeff: float = 1.0
    factormin: float = 0.2
    factormax: float = 10.0
    safety: float = 0.9
    observed_order: bool | None = None

    def __post_init__(self):
        for name in ("pcoeff", "icoeff"):
            value = getattr(self, name)
            if name == "pcoeff" and value is None:
                continue  # the default: 0.2 in forward solves, 0 in backward ones
            if not (isinstance(value, numbers.Real) and 0 <= value < 10):
                allowed = "None or a number in [0, 10)" if name == "pcoeff" else "in [0, 10)"
                raise ValueError(f"PIDController: {name}={value!r} must be {allowed}")
        if not 0 < self.factormin < 1 < self.factormax:
            raise ValueError(
                f"PIDController: need 0 < factormin ({self.factormin}) < 1 < factormax "
                f"({self.factormax})"
            )
        if not 0 < self.safety <= 1:
            raise ValueError(f"PIDController: safety={self.safety} must be in (0, 1]")
        if not any(self.observed_order is v for v in (None, True, False)):
            raise ValueError(
                f"PIDController: observed_order={self.observed_order!r} must be None, True or False"
            )

    def factor(self, err, prev_err, accept, order, prev_rejected=False, last=None):
        """Multiplicative update of the step size; err/prev_err are scaled errors (>= 0).

        ``prev_rejected``: whether the step attempted before this one was rejected.
        ``last``: (scaled error, step size ratio to this one) of the attempt before this one.

        A rejection that follows a rejection uses the order the two attempts showed (the error
        ratio against the step ratio, between 2 and ``order``) instead of the method's: where
        the error does not shrink like dt**order (a field with kinks such as ReLU networks, or
        a step far outside the asymptotic range), the textbook factor shrinks the step too
        little and a run of rejections follows.
        """
        tiny = jnp.finfo(jnp.result_type(err)).tiny
        inv = 1.0 / jnp.maximum(err, tiny)
        pcoeff = FORWARD_PCOEFF if self.pcoeff is None else self.pcoeff
        exponent = (pcoeff + self.icoeff) / order
        # The stepping loop passes ``last`` only when the rule is on for its solve.
        if last is not None and self.observed_order is not False:
            last_err, ratio = last
            seen = jnp.log(jnp.maximum(last_err, tiny) * inv) / jnp.log(ratio)
            seen = jnp.where(jnp.isfinite(seen) & (ratio > 1.01), seen, order)
            seen = jnp.clip(seen, 2.0, order)
            exponent = jnp.where(prev_rejected & ~accept, 1.0 / seen, exponent)
        factor = self.safety * inv**exponent
        if pcoeff:
            factor = factor * jnp.maximum(prev_err, tiny) ** (pcoeff / order)
        lo = self.factormin
        hi = jnp.where(accept, jnp.where(prev_rejected, 1.0, self.factormax), self.safety)
        factor = jnp.clip(factor, lo, hi)
        return jnp.where(jnp.isfinite(err), factor, self.factormin)
