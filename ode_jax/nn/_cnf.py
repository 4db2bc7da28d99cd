"""Continuous normalizing flows (paper Section 4; FFJORD's trace estimator).

A CNF transports samples with ``dz/dt = f(t, z)``; the log-density follows the instantaneous
change of variables ``d log p(z(t))/dt = -tr(∂f/∂z)``. We integrate ``[z, log p]`` jointly with
:func:`ode_jax.odeint`. Convention (as FFJORD): data at ``t0``, the base ``N(0, I)`` at ``t1``;
``log_prob`` solves forwards from the data, sampling solves backwards from base samples.

The divergence ``tr(∂f/∂z)`` is computed

- "exact": by the field's own ``flow_and_divergence(t, z)`` where it has one (the paper's planar
  CNF: a sum of inner products), otherwise from the Jacobian, one JVP per dimension (cheap in 2-D);
- "hutchinson": ``εᵀ(∂f/∂z)ε`` with one VJP per evaluation (Grathwohl et al. 2019), the noise
  ``ε`` (Gaussian or Rademacher, ``E[εεᵀ] = I``) drawn once per solve and held fixed along it, so
  the augmented ODE stays an ODE and the estimate of ``log p`` is unbiased.
"""

from __future__ import annotations

from typing import Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._odeint import odeint
from .._regularise import (
    Regulariser,
    hutchinson_probe,
    init_state,
    penalty_rates,
    solve_kwargs,
    split_solution,
    steer_end_time,
)
from .._settings import SolveSettings
from ._broadcast import lift
from ._planar import standard_normal_log_prob
from ._solve import SETTINGS_FIELDS, solve_with

DIVERGENCES = ("exact", "hutchinson")
DEFAULT_SETTINGS = SolveSettings(solver="dopri5", rtol=1e-5, atol=1e-5)
NOISES = ("gaussian", "rademacher")


class PlanarCNFField(eqx.Module):
    """The paper's planar CNF: ``dz/dt = (1/M) Σₘ uₘ(t) tanh(wₘ(t)ᵀz + bₘ(t))``.

    ``(w, u, b)`` come from a hypernetwork of ``t`` (an MLP ``1 -> hyper_width -> hyper_width``);
    ``u`` is gated by a sigmoid, as in torchdiffeq's CNF example. The trace is
    ``(1/M) Σₘ (1 - hₘ²) wₘᵀuₘ``: M inner products, no Jacobian.

    Args:
        dim: dimension ``d``.
        width: hidden units ``M``.
        hyper_width: hidden units of the hypernetwork's two layers.
        dtype, key: parameter dtype, PRNG key.
    """

    hyper: eqx.nn.MLP
    dim: int = eqx.field(static=True)
    width: int = eqx.field(static=True)

    def __init__(self, dim: int, width: int, *, hyper_width: int = 32, dtype=None, key):
        if dim < 1 or width < 1 or hyper_width < 1:
            raise ValueError(
                f"need dim, width, hyper_width >= 1, got {dim}, {width}, {hyper_width}"
            )
        out = 3 * width * dim + width
        self.hyper = eqx.nn.MLP(1, out, hyper_width, 2, jnp.tanh, dtype=dtype, key=key)
        self.dim, self.width = dim, width

    def params(self, t, dtype):
        """``(w, u, b)`` at time ``t``: shapes (M, d), (M, d), (M,)."""
        p = self.hyper(jnp.reshape(jnp.asarray(t, self.hyper.layers[0].weight.dtype), (1,)))
        p = p.astype(dtype)
        md = self.width * self.dim
        w = p[:md].reshape(self.width, self.dim)
        u = p[md : 2 * md].reshape(self.width, self.dim)
        gate = jax.nn.sigmoid(p[2 * md : 3 * md].reshape(self.width, self.dim))
        return w, u * gate, p[3 * md :]

    def __call__(self, t, z, args=None):
        del args
        w, u, b = self.params(t, z.dtype)
        return jnp.tanh(z @ w.T + lift(b, z.ndim)) @ u / self.width

    def flow_and_divergence(self, t, z):
        """``(f(t, z), tr ∂f/∂z)``; shapes ``z.shape`` and ``z.shape[:-1]``."""
        w, u, b = self.params(t, z.dtype)
        h = jnp.tanh(z @ w.T + lift(b, z.ndim))  # (..., M)
        return h @ u / self.width, (1 - h**2) @ jnp.sum(w * u, -1) / self.width


def divergence_exact(fn, z):
    """``(fn(z), tr ∂fn/∂z)`` per sample, for ``fn`` acting row-wise on ``z`` (..., d).

    One JVP per dimension through a single linearisation; for row-wise maps the tangent
    ``e_i`` broadcast over the batch picks column ``i`` of every sample's Jacobian.
    """
    out, jvp = jax.linearize(fn, z)
    eye = jnp.eye(z.shape[-1], dtype=z.dtype)
    div = sum(jvp(jnp.broadcast_to(eye[i], z.shape))[..., i] for i in range(z.shape[-1]))
    return out, div


def divergence_hutchinson(fn, z, eps):
    """``(fn(z), εᵀ(∂fn/∂z)ε)`` per sample: one VJP. Unbiased when ``E[εεᵀ] = I``."""
    out, vjp = jax.vjp(fn, z)
    (eps_jac,) = vjp(eps)
    return out, jnp.sum(eps_jac * eps, -1)


def sample_noise(key, shape, kind: str, dtype):
    """Hutchinson probes with ``E[εεᵀ] = I``: standard Gaussian or Rademacher (±1)."""
    if kind == "gaussian":
        return jax.random.normal(key, shape, dtype)
    if kind == "rademacher":
        return jax.random.rademacher(key, shape, dtype)
    raise ValueError(f"noise={kind!r} is not one of {NOISES}")


def flow_and_divergence(field, t, z, kind: str, eps=None):
    """``(f(t, z), divergence)`` of ``field`` by method ``kind`` (see the module docstring)."""
    if kind == "exact":
        if hasattr(field, "flow_and_divergence"):
            return field.flow_and_divergence(t, z)
        return divergence_exact(lambda y: field(t, y), z)
    if kind == "hutchinson":
        if eps is None:
            raise ValueError("divergence='hutchinson' needs the noise eps")
        return divergence_hutchinson(lambda y: field(t, y), z, eps)
    raise ValueError(f"divergence={kind!r} is not one of {DIVERGENCES}")


def _augmented_exact(t, state, field):
    dz, div = flow_and_divergence(field, t, state[0], "exact")
    return dz, -div


def _augmented_hutchinson(t, state, args):
    field, eps = args
    dz, div = flow_and_divergence(field, t, state[0], "hutchinson", eps)
    return dz, -div


def _regularised(reg: Regulariser, kind: str):
    """The field of ``((z, delta), rates)``: the CNF's, plus the penalties of the flow ``z``."""

    def g(t, state, args):
        (z, _), rates = state
        (field, eps), reg_eps = args
        dz, div = flow_and_divergence(field, t, z, kind, eps)
        _, dr = penalty_rates(
            lambda t_, z_: field(t_, z_),
            t,
            z,
            reg.penalties,
            eps=reg_eps,
            order=reg.order,
            trace=reg.trace,
        )
        out = {p: dr[p].astype(r.dtype) if p in dr else jnp.zeros_like(r) for p, r in rates.items()}
        return (dz, -div), out

    return g


def _plain(t, z, field):
    return field(t, z)


class CNF(eqx.Module):
    """A continuous normalizing flow with base ``N(0, I)`` at ``t1`` and data at ``t0``.

    Args:
        field: the vector field, an equinox module called ``field(t, z)`` with ``z`` (..., d)
            (e.g. :class:`PlanarCNFField`, or an :class:`ode_jax.nn.MLPField` with
            ``time="concatsquash"`` as in FFJORD).
        t0, t1: the integration interval, ``t0 < t1``.
        divergence: "exact" or "hutchinson" (the default of every method; each can override).
        noise: Hutchinson probes, "gaussian" or "rademacher".
        settings: how to solve (:class:`ode_jax.SolveSettings`: solver, tolerances, adjoint...);
            default dopri5 at rtol = atol = 1e-5.

        regulariser: an :class:`ode_jax.Regulariser` applied by training calls that pass
            ``regularise=True`` (``to_base``, ``log_prob``, ``sample_with_log_prob``): the
            penalties of the flow ``dz/dt`` (sums over the batch) come back in
            ``stats["penalties"]``; STEER randomises the end ``t1`` of the solve.

    Every method takes a batch ``(..., d)`` and returns the solver statistics last; its
    ``overrides`` replace settings for that call (e.g. ``rtol=1e-7``; traced values allowed).
    """

    field: eqx.Module
    t0: float = eqx.field(static=True)
    t1: float = eqx.field(static=True)
    divergence: str = eqx.field(static=True)
    noise: str = eqx.field(static=True)
    settings: SolveSettings = eqx.field(static=True)
    regulariser: Regulariser | None = eqx.field(static=True, default=None)

    def __init__(
        self,
        field,
        *,
        t0: float = 0.0,
        t1: float = 1.0,
        divergence: Literal["exact", "hutchinson"] = "exact",
        noise: Literal["gaussian", "rademacher"] = "gaussian",
        settings: SolveSettings = DEFAULT_SETTINGS,
        regulariser: Regulariser | None = None,
    ):
        if not callable(field):
            raise TypeError(f"field must be callable field(t, z), got {type(field).__name__}")
        if not t0 < t1:
            raise ValueError(f"need t0 < t1, got t0={t0}, t1={t1}")
        if divergence not in DIVERGENCES:
            raise ValueError(f"divergence={divergence!r} is not one of {DIVERGENCES}")
        if noise not in NOISES:
            raise ValueError(f"noise={noise!r} is not one of {NOISES}")
        if not isinstance(settings, SolveSettings):
            raise TypeError(f"settings must be an ode_jax.SolveSettings, got {settings!r}")
        self.field = field
        self.t0, self.t1 = float(t0), float(t1)
        if regulariser is not None and not isinstance(regulariser, Regulariser):
            raise TypeError(f"regulariser must be an ode_jax.Regulariser, got {regulariser!r}")
        if regulariser is not None and regulariser.steer >= t1 - t0:
            raise ValueError(f"STEER's half width {regulariser.steer} must be < t1 - t0")
        self.divergence, self.noise, self.settings = divergence, noise, settings
        self.regulariser = regulariser

    def _solve(self, state0, ts, kind, key, probe, overrides, regularise=False):
        if regularise and self.regulariser is not None:
            return self._solve_regularised(state0, ts, kind, key, probe, overrides)
        kind = kind or self.divergence
        if kind not in DIVERGENCES:
            raise ValueError(f"divergence={kind!r} is not one of {DIVERGENCES}")
        if kind == "hutchinson":
            if key is None:
                raise ValueError("divergence='hutchinson' needs a PRNG key (key=...)")
            eps = sample_noise(key, state0[0].shape, self.noise, state0[0].dtype)
            f, args = _augmented_hutchinson, (self.field, eps)
        else:
            f, args = _augmented_exact, self.field
        sol = solve_with(self.settings, f, state0, ts, args, probe=probe, overrides=overrides)
        return jax.tree.map(lambda y: y[-1], sol.ys), sol.stats

    def _solve_regularised(self, state0, ts, kind, key, probe, overrides):
        kind, reg = kind or self.divergence, self.regulariser
        if kind not in DIVERGENCES:
            raise ValueError(f"divergence={kind!r} is not one of {DIVERGENCES}")
        if (reg.needs_key or kind == "hutchinson") and key is None:
            raise ValueError("this regularised solve draws random numbers: pass key=...")
        unknown = sorted(set(overrides) - set(SETTINGS_FIELDS))
        if unknown:
            raise TypeError(f"unknown solve setting(s) {unknown}; settings: {SETTINGS_FIELDS}")
        z0 = state0[0]
        eps = reg_eps = None
        if kind == "hutchinson":
            eps = sample_noise(key, z0.shape, self.noise, z0.dtype)
        if key is not None:
            k_reg, k_steer = jax.random.split(jax.random.fold_in(key, 1))
        if "jacobian" in reg.penalties and reg.trace == "hutchinson":
            reg_eps = hutchinson_probe(k_reg, z0, reg.noise)
        if reg.steer > 0:  # the end at t1 moves, whichever way the solve runs
            t_end = steer_end_time(k_steer, self.t0, self.t1, reg.steer, z0.dtype)
            t0 = jnp.asarray(self.t0, z0.dtype)
            ts = jnp.stack([t0, t_end]) if ts[0] < ts[1] else jnp.stack([t_end, t0])
        kwargs = solve_kwargs(reg, self.settings.kwargs() | overrides)
        f = _regularised(reg, kind)
        state0 = init_state(state0, reg.penalties, z0.dtype)
        sol, penalties = split_solution(
            odeint(f, state0, ts, ((self.field, eps), reg_eps), probe=probe, **kwargs), ts
        )
        return jax.tree.map(lambda y: y[-1], sol.ys), {**sol.stats, "penalties": penalties}

    def _check(self, arr, name):
        arr = jnp.asarray(arr)
        if arr.ndim < 1 or not jnp.issubdtype(arr.dtype, jnp.floating):
            raise ValueError(f"{name} must be a float array of shape (..., d), got {arr.shape}")
        return arr

    def to_base(self, x, *, key=None, divergence=None, probe=None, regularise=False, **overrides):
        """``(z, log p(x), stats)``: solve ``[x, 0]`` from ``t0`` to ``t1``.

        ``z`` has the shape of ``x``, ``log p(x)`` shape ``x.shape[:-1]``. ``key`` draws the
        Hutchinson noise (needed for ``divergence="hutchinson"``).
        """
        x = self._check(x, "x")
        ts = np.array([self.t0, self.t1], x.dtype)
        state0 = (x, jnp.zeros(x.shape[:-1], x.dtype))
        (z, delta), stats = self._solve(state0, ts, divergence, key, probe, overrides, regularise)
        return z, standard_normal_log_prob(z) - delta, stats

    def log_prob(self, x, *, key=None, divergence=None, probe=None, regularise=False, **overrides):
        """``(log p(x), stats)``; see :meth:`to_base`."""
        _, logp, stats = self.to_base(
            x, key=key, divergence=divergence, probe=probe, regularise=regularise, **overrides
        )
        return logp, stats

    def sample_with_log_prob(
        self, z, *, key=None, divergence=None, probe=None, regularise=False, **overrides
    ):
        """``(x, log p(x), stats)`` for base samples ``z``: solve from ``t1`` back to ``t0``."""
        z = self._check(z, "z")
        ts = np.array([self.t1, self.t0], z.dtype)
        state0 = (z, standard_normal_log_prob(z))
        (x, logp), stats = self._solve(state0, ts, divergence, key, probe, overrides, regularise)
        return x, logp, stats

    def transport(self, y, ts, *, probe=None, **overrides):
        """The states ``z(ts)`` (len(ts), ..., d) starting from ``z(ts[0]) = y``, and stats.

        E.g. ``ts = linspace(t1, t0, n)`` moves base samples to the data over time.
        """
        y = self._check(y, "y")
        ts = np.asarray(ts, y.dtype)
        sol = solve_with(self.settings, _plain, y, ts, self.field, probe=probe, overrides=overrides)
        return sol.ys, sol.stats
