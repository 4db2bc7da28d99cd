"""Latent ODEs for irregularly sampled time series (Chen et al. 2018, Section 5) and baselines.

Generative model: ``z0 ~ N(0, I)``, ``z(t) = ODESolve(f, z0, t)``,
``x_i ~ N(decoder(z(t_i)), s^2)``.
Inference: a recognition network reads the observations backwards in time and returns
``q(z0 | x) = N(mean, exp(logvar))``; training maximises the ELBO.

Shapes: ``B`` sequences, ``N`` observations each, ``T`` grid times, ``D`` observed dims,
``L`` latent dims, ``H`` hidden units. Encoders and baselines act on one sequence
(``jax.vmap`` them over ``B``); :meth:`LatentODE.trajectory` solves a batch at once.

Batched solving. A batch whose observation times all lie on one grid (irregular subsamples of
a regular grid, as here) is solved once on the union of the times with the batch as one state
(:func:`solve_on_union`, one adaptive step sequence for the batch, no per-sequence bookkeeping),
and each sequence reads its own times through a mask. :func:`solve_per_sequence` is the
general alternative (``vmap`` of ``odeint`` over per-sequence time arrays); both agree to
solver tolerance (tests/test_latent_ode.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._settings import SolveSettings
from ._block import call_field
from ._broadcast import lift
from ._linear import _apply
from ._mlp import MLPField
from ._solve import solve_with

ODERNN_SETTINGS = SolveSettings(solver="rk4", dt0=0.25)  # four RK4 steps per gap


def gaussian_kl(mean_q, logvar_q, mean_p=0.0, logvar_p=0.0):
    """KL(N(mean_q, exp(logvar_q)) || N(mean_p, exp(logvar_p))) of diagonal Gaussians, summed
    over the last axis."""
    var_ratio = jnp.exp(logvar_q - logvar_p)
    diff2 = (mean_q - mean_p) ** 2 * jnp.exp(-logvar_p)
    return 0.5 * jnp.sum(var_ratio + diff2 - 1.0 - (logvar_q - logvar_p), axis=-1)


def gaussian_log_density(x, mean, logvar):
    """Elementwise ``log N(x; mean, exp(logvar))``. The arguments broadcast against each
    other after leading axes are added (e.g. one log-variance per dimension, shape (D,))."""
    ndim = max(jnp.ndim(x), jnp.ndim(mean), jnp.ndim(logvar))
    x, mean, logvar = (lift(a, ndim) for a in (x, mean, logvar))
    return -0.5 * (jnp.log(2 * jnp.pi) + logvar + (x - mean) ** 2 * jnp.exp(-logvar))


def solve_on_union(
    field: Callable, z0_BL, ts_T, settings: SolveSettings | None = None, *, probe=None, **overrides
):
    """``z`` at every time of ``ts_T`` for every row of ``z0_BL``: ``(z_TBL, stats)``.

    The batch is one ODE state, so the rows share one step-size sequence; the dynamics act
    row-wise (``field`` maps ``(B, L) -> (B, L)``), so each row is its own trajectory.
    ``settings`` (default ``SolveSettings()``) with ``overrides`` replacing fields.
    """
    settings = SolveSettings() if settings is None else settings
    sol = solve_with(settings, call_field, z0_BL, ts_T, field, probe=probe, overrides=overrides)
    return sol.ys, sol.stats


def solve_per_sequence(
    field: Callable, z0_BL, ts_BN, settings: SolveSettings | None = None, *, probe=None, **overrides
):
    """``z`` of row ``b`` at its own times ``ts_BN[b]`` (each starting at ``ts_BN[b, 0]``):
    ``(z_BNL, stats)`` via ``vmap`` of ``odeint`` (each row keeps its own step sizes).
    ``settings`` and ``overrides`` as in :func:`solve_on_union`."""
    settings = SolveSettings() if settings is None else settings

    def one(z0, ts):
        sol = solve_with(settings, call_field, z0, ts, field, probe=probe, overrides=overrides)
        return sol.ys, sol.stats

    return jax.vmap(one)(z0_BL, ts_BN)


class TanhRNNCell(eqx.Module):
    """Elman cell ``h' = tanh(W [x, h] + b)`` (torchdiffeq's RecognitionRNN)."""

    linear: eqx.nn.Linear

    def __init__(self, input_size: int, hidden_size: int, *, key: jax.Array):
        self.linear = eqx.nn.Linear(input_size + hidden_size, hidden_size, key=key)

    def __call__(self, x, h):
        return jnp.tanh(_apply(self.linear, jnp.concatenate([x, h], axis=-1)))


def make_cell(kind: Literal["gru", "tanh"], input_size: int, hidden_size: int, key):
    if kind == "gru":
        return eqx.nn.GRUCell(input_size, hidden_size, key=key)
    if kind == "tanh":
        return TanhRNNCell(input_size, hidden_size, key=key)
    raise ValueError(f"cell={kind!r} is not one of ('gru', 'tanh')")


def _gaps_back_to(t_N, t0):
    """``t_i - t_{i-1}`` with ``t_{-1} = t0``: (N,)."""
    return jnp.diff(t_N, prepend=jnp.asarray(t0, t_N.dtype)[None])


class RecognitionRNN(eqx.Module):
    """``q(z0)`` from an RNN run backwards in time over ``(x_i, t_i - t_{i-1})`` pairs.

    The last pair it reads is ``(x_0, t_0 - t0)``, so it knows how far the first observation is
    from ``t0``, the time of ``z0``. ``enc(x_ND, t_N, t0) -> (mean_L, logvar_L)``.
    """

    cell: eqx.Module
    readout: eqx.nn.Linear

    def __init__(self, obs_size, hidden_size, latent_size, *, cell="gru", key):
        k1, k2 = jax.random.split(key)
        self.cell = make_cell(cell, obs_size + 1, hidden_size, k1)
        self.readout = eqx.nn.Linear(hidden_size, 2 * latent_size, key=k2)

    def __call__(self, x_ND, t_N, t0):
        gaps = _gaps_back_to(t_N, t0).astype(x_ND.dtype)
        inputs = jnp.concatenate([x_ND, gaps[:, None]], axis=-1)
        h0 = jnp.zeros(self.readout.in_features, x_ND.dtype)
        h, _ = jax.lax.scan(lambda h, x: (self.cell(x, h), None), h0, inputs, reverse=True)
        mean, logvar = jnp.split(self.readout(h), 2)
        return mean, logvar


class ODERNNEncoder(eqx.Module):
    """ODE-RNN (Rubanova et al. 2019) run backwards: between observations the hidden state
    follows ``dh/dt = g(h)``; at each observation a GRU update. ``enc(x_ND, t_N, t0)``.

    Each gap is solved on ``s in [0, 1]`` as ``dh/ds = -gap * g(h)``, so every solve has the
    same (concrete) times and only the gap is data. ``settings`` solve each gap (default: four
    RK4 steps).
    """

    cell: eqx.nn.GRUCell
    dynamics: MLPField
    readout: eqx.nn.Linear
    settings: SolveSettings = eqx.field(static=True)

    def __init__(
        self,
        obs_size,
        hidden_size,
        latent_size,
        *,
        field_width=20,
        settings: SolveSettings = ODERNN_SETTINGS,
        key,
    ):
        k1, k2, k3 = jax.random.split(key, 3)
        self.cell = eqx.nn.GRUCell(obs_size, hidden_size, key=k1)
        self.dynamics = MLPField(hidden_size, field_width, 1, key=k2)
        self.readout = eqx.nn.Linear(hidden_size, 2 * latent_size, key=k3)
        self.settings = settings

    def _evolve(self, h, gap):
        def f(s, h, args):
            dynamics, gap = args
            return -gap * dynamics(s, h)

        ts = np.array([0.0, 1.0], h.dtype)  # numpy: known at trace time under jit
        return self.settings.odeint(f, h, ts, (self.dynamics, gap)).ys[-1]

    def __call__(self, x_ND, t_N, t0):
        gaps = _gaps_back_to(t_N, t0)  # gaps[i]: from t_i back to the previous time

        def step(h, x_gap):
            x, gap = x_gap
            return self._evolve(self.cell(x, h), gap), None

        h0 = jnp.zeros(self.readout.in_features, x_ND.dtype)
        h, _ = jax.lax.scan(step, h0, (x_ND, gaps), reverse=True)
        mean, logvar = jnp.split(self.readout(h), 2)
        return mean, logvar


class LatentODE(eqx.Module):
    """Encoder, latent dynamics ``f`` and decoder of a latent ODE.

    Args:
        obs_size, latent_size: ``D`` and ``L`` (paper: 2 and 4).
        rnn_hidden: encoder hidden units (paper: 25).
        field_width, decoder_width: hidden units of the dynamics and decoder MLPs (paper: 20).
        field_depth, decoder_depth: their hidden layers (paper: 1 each; torchdiffeq's example
            uses 2 for the dynamics).
        encoder: "rnn" (:class:`RecognitionRNN`, the paper) or "odernn" (:class:`ODERNNEncoder`).
        cell: the recognition RNN's cell.
        settings: how the latent trajectories are solved (:class:`ode_jax.SolveSettings`;
            default ``SolveSettings()``, :func:`ode_jax.odeint`'s defaults).
    """

    encoder: eqx.Module
    field: MLPField
    decoder: MLPField
    settings: SolveSettings = eqx.field(static=True)

    def __init__(
        self,
        obs_size=2,
        latent_size=4,
        *,
        rnn_hidden=25,
        field_width=20,
        decoder_width=20,
        field_depth=1,
        decoder_depth=1,
        encoder: Literal["rnn", "odernn"] = "rnn",
        cell: Literal["gru", "tanh"] = "gru",
        settings: SolveSettings | None = None,
        key,
    ):
        settings = SolveSettings() if settings is None else settings
        if not isinstance(settings, SolveSettings):
            raise TypeError(f"settings must be an ode_jax.SolveSettings, got {settings!r}")
        self.settings = settings
        k1, k2, k3 = jax.random.split(key, 3)
        if encoder == "rnn":
            self.encoder = RecognitionRNN(obs_size, rnn_hidden, latent_size, cell=cell, key=k1)
        elif encoder == "odernn":
            self.encoder = ODERNNEncoder(obs_size, rnn_hidden, latent_size, key=k1)
        else:
            raise ValueError(f"encoder={encoder!r} is not one of ('rnn', 'odernn')")
        elu = jax.nn.elu
        self.field = MLPField(latent_size, field_width, field_depth, activation=elu, key=k2)
        self.decoder = MLPField(
            latent_size, decoder_width, decoder_depth, out_size=obs_size, activation=elu, key=k3
        )

    def encode(self, x_BND, t_BN, t0):
        """``(mean_BL, logvar_BL)`` of ``q(z(t0) | x)``."""
        return jax.vmap(self.encoder, in_axes=(0, 0, None))(x_BND, t_BN, t0)

    def trajectory(self, z0_BL, ts_T, *, probe=None, **overrides):
        """``(z_TBL, stats)``: the latent paths from ``z(ts_T[0]) = z0_BL``, solved with the
        model's settings (``overrides`` replace fields for this call)."""
        return solve_on_union(self.field, z0_BL, ts_T, self.settings, probe=probe, **overrides)

    def decode(self, z):
        """Mean of ``p(x | z)``, any leading axes: ``(..., L) -> (..., D)``."""
        return self.decoder(0.0, z)


def latent_ode_elbo(
    model: LatentODE, x_BND, t_BN, idx_BN, grid_T, obs_logvar, key, *, probe=None, **overrides
):
    """Per-sequence ELBO terms with one reparameterised sample of ``z0``.

    Observations ``x_BND`` at times ``t_BN = grid_T[idx_BN]``; ``z0`` lives at ``grid_T[0]``.
    The batch is solved once on ``grid_T`` (the union of all times); each sequence's
    likelihood sums over its own grid points (the mask of ``idx_BN``). ``probe`` and
    ``overrides`` go to :meth:`LatentODE.trajectory`.

    Returns ``(log_lik_B, kl_B, stats)``.
    """
    mean, logvar = model.encode(x_BND, t_BN, grid_T[0])
    eps = jax.random.normal(key, mean.shape, mean.dtype)
    z0 = mean + jnp.exp(0.5 * logvar) * eps
    z_TBL, stats = model.trajectory(z0, grid_T, probe=probe, **overrides)
    pred_BTD = jnp.swapaxes(model.decode(z_TBL), 0, 1)
    # Scatter observations onto the grid, and a mask of where they are.
    rows = jnp.arange(x_BND.shape[0])[:, None]
    x_grid = jnp.zeros(pred_BTD.shape, x_BND.dtype).at[rows, idx_BN].set(x_BND)
    mask = jnp.zeros(pred_BTD.shape[:2], x_BND.dtype).at[rows, idx_BN].set(1.0)
    logp = gaussian_log_density(x_grid, pred_BTD, obs_logvar).sum(-1)
    return jnp.sum(mask * logp, axis=1), gaussian_kl(mean, logvar), stats


class RNNBaseline(eqx.Module):
    """An autoregressive RNN forecaster (the baselines of Table 2).

    It reads a sequence of *events* ``i = 0 .. N-1``: a value ``x_i`` (observed where
    ``m_i = 1``) and the time ``gap_i`` from event ``i`` to event ``i + 1``. After reading event
    ``i`` it predicts the value at event ``i + 1`` as the last value it read plus a learned
    increment (a residual output). Its inputs are ``x_i * m_i / scale``, then ``m_i``
    (``use_mask``) and ``gap_i / gap_scale`` (``use_gap``). Without gaps the increment is
    ``scale * readout(h_i)``; with gaps it is ``(gap_i / gap_scale) * scale * readout(h_i)``,
    a rate times the time step, so one model serves the irregular gaps of training and the
    grid steps of extrapolation.

    Two uses: the plain RNN (``use_mask``) steps along the regular time grid and is told which
    grid points are observed, so time is implicit in the step count; the RNN with time gaps
    (``use_gap``) steps from observation to observation and reads the gap to the next one.
    Extrapolation (:meth:`extrapolate`) feeds each prediction back as the next input; so does
    training from the events where ``free`` is set (a free-running rollout), which trains
    the model on the inputs it sees when it extrapolates.
    """

    cell: eqx.Module
    readout: eqx.nn.Linear
    use_gap: bool = eqx.field(static=True)
    use_mask: bool = eqx.field(static=True)
    scale: float = eqx.field(static=True)
    gap_scale: float = eqx.field(static=True)

    def __init__(
        self,
        obs_size=2,
        hidden_size=25,
        *,
        use_gap=False,
        use_mask=False,
        scale=1.0,
        gap_scale=1.0,
        cell: Literal["gru", "tanh"] = "gru",
        key,
    ):
        k1, k2 = jax.random.split(key)
        inputs = obs_size + int(use_gap) + int(use_mask)
        self.cell = make_cell(cell, inputs, hidden_size, k1)
        self.readout = eqx.nn.Linear(hidden_size, obs_size, key=k2)
        self.use_gap, self.use_mask = use_gap, use_mask
        self.scale, self.gap_scale = float(scale), float(gap_scale)

    def _read(self, h, x, m, gap, last):
        """Read one event ``(x, m, gap)``: the new state and the prediction ``gap`` later."""
        dtype = x.dtype
        gap = gap.astype(dtype) / self.gap_scale
        feats = [x * m / self.scale]
        feats += [m[None]] if self.use_mask else []
        feats += [gap[None]] if self.use_gap else []
        h = self.cell(jnp.concatenate(feats), h)
        step = gap * self.scale if self.use_gap else self.scale
        return h, last + step * self.readout(h)

    def _scan(self, x_ND, m_N, gap_N, free_N):
        """``(pred_ND, h_NH)``: predictions and the state after each event."""
        dtype = x_ND.dtype

        def step(carry, event):
            h, last, prev = carry
            x, m, gap, free = event
            x = jnp.where(free, prev, x)
            m = jnp.where(free, jnp.ones((), dtype), m.astype(dtype))
            last = jnp.where(m > 0, x, last)
            h, pred = self._read(h, x, m, gap, last)
            return (h, last, pred), (pred, h)

        h0 = jnp.zeros(self.readout.in_features, dtype)
        zero = jnp.zeros(x_ND.shape[-1], dtype)
        _, out = jax.lax.scan(step, (h0, zero, zero), (x_ND, m_N, gap_N, free_N))
        return out

    def run(self, x_ND, m_N, gap_N, free_N=None):
        """Predictions ``pred_ND``: ``pred[i]`` is the value at event ``i + 1``. Where
        ``free_N`` (bool) is set, event ``i`` reads ``pred[i - 1]`` (as observed) instead of
        ``x[i]``; ``free_N[0]`` must be False."""
        free_N = jnp.zeros(m_N.shape, bool) if free_N is None else free_N
        return self._scan(x_ND, m_N, gap_N, free_N)[0]

    def extrapolate(self, x_ND, m_N, gap_N, future_gaps_M, commit_every: int = 1):
        """Read the ``N`` events, then predict ``M + 1`` more, feeding predictions back:
        ``(M + 1, D)``. ``gap_N[-1]`` is the time from the last event to the first
        prediction, ``future_gaps_M`` the gaps between the predictions.

        ``commit_every = k > 1`` (``use_gap`` only): only every k-th prediction is fed back
        as an event; the ones between are read off the last fed-back event with the gap to
        their time (without changing the state). So the model steps through the future with
        gaps like those it was trained on (its training events are observations, k grid steps
        apart on average) instead of one grid step at a time.
        """
        M, N = future_gaps_M.shape[0], x_ND.shape[0]
        if commit_every == 1:
            x = jnp.concatenate([x_ND, jnp.zeros((M, x_ND.shape[-1]), x_ND.dtype)])
            m = jnp.concatenate([m_N, jnp.ones(M, m_N.dtype)])
            gap = jnp.concatenate([gap_N, future_gaps_M.astype(gap_N.dtype)])
            free = jnp.arange(x.shape[0]) >= N
            return self.run(x, m, gap, free)[N - 1 :]
        if not self.use_gap:
            raise ValueError("commit_every > 1 needs use_gap=True (the gap says when)")
        # The state before the last event; the last event is then the first one committed.
        _, h_N = self._scan(x_ND, m_N, gap_N, jnp.zeros(N, bool))
        h_before = h_N[-2] if N > 1 else jnp.zeros(self.readout.in_features, x_ND.dtype)
        zero = jnp.zeros((1,), gap_N.dtype)
        offsets = gap_N[-1] + jnp.concatenate([zero, jnp.cumsum(future_gaps_M.astype(gap_N.dtype))])
        one = jnp.ones((), x_ND.dtype)

        def step(carry, j_off):
            h, x_c, t_c = carry
            j, off = j_off
            h_q, pred = self._read(h, x_c, one, off - t_c, x_c)
            commit = (j + 1) % commit_every == 0
            carry = (
                jnp.where(commit, h_q, h),
                jnp.where(commit, pred, x_c),
                jnp.where(commit, off, t_c),
            )
            return carry, pred

        init = (h_before, x_ND[-1], jnp.zeros((), gap_N.dtype))
        _, preds = jax.lax.scan(step, init, (jnp.arange(M + 1), offsets))
        return preds
