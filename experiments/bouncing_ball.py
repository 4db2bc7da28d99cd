"""Bouncing ball: learn gravity g and the coefficient of restitution e through event times.

A ball falls from height h0 and bounces off the floor h = 0, where its velocity jumps v -> -e v.
The model sees noisy heights at irregular times and fits g and e (as log g and logit e, so they
stay valid) by differentiating through the floor impacts: each segment is one solve that stops
at the event h = 0 (direction -1), whose time is differentiable (implicit function theorem);
the jump is applied to the event state and the next segment starts from the event time. A
``lax.scan`` runs a fixed number of segments, so the whole trajectory jits; heights between
impacts are read off each segment's dense output.

With ``--drag mlp`` the true ball also feels quadratic air drag (dv/dt = -g - c v|v|) and the
model learns g, e and a small MLP correction m(v) to the acceleration, pinned to m(0) = 0 so
that g stays identifiable (g = -dv/dt at the top of a flight, where v = 0).

    python -m experiments.bouncing_ball --out runs/bouncing_ball            # --help: every flag
    python -m experiments.bouncing_ball --drag mlp --out runs/bouncing_ball/drag
"""

from __future__ import annotations

import functools
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

import ode_jax
from configs.bouncing_ball import SMOKE, BouncingBallConfig
from experiments import common
from experiments.common import report

DTYPE = jnp.float32
FLOOR = ode_jax.Event(lambda t, y, ball: y[0], direction=-1)  # falling through h = 0
V_SCALE = 10.0  # m/s: the drag MLP sees v / V_SCALE, of order one
TRUTH_TOLS = dict(rtol=1e-7, atol=1e-7)  # the data's solve: tighter than training's


class TrueBall(eqx.Module):
    """The system that made the data: gravity, restitution and quadratic drag c v|v|."""

    g: jax.Array
    e: jax.Array
    c: jax.Array

    def acceleration(self, v):
        return -self.g - self.c * v * jnp.abs(v)


class Ball(eqx.Module):
    """The model: log g, logit e and (optionally) an MLP correction m(v) - m(0) to dv/dt."""

    log_g: jax.Array
    logit_e: jax.Array
    drag: eqx.nn.MLP | None

    @property
    def g(self):
        return jnp.exp(self.log_g)

    @property
    def e(self):
        return jax.nn.sigmoid(self.logit_e)

    def acceleration(self, v):
        a = -self.g
        if self.drag is not None:
            a = a + self.drag(v / V_SCALE) - self.drag(jnp.zeros_like(v))
        return a


def init_ball(cfg: BouncingBallConfig, key, dtype=DTYPE) -> Ball:
    """The initial guess: g_init, e_init and (drag="mlp") an MLP whose output starts at 0."""
    drag = None
    if cfg.drag == "mlp":
        mlp = eqx.nn.MLP(
            "scalar", "scalar", cfg.mlp_width, cfg.mlp_depth, jax.nn.tanh, dtype=dtype, key=key
        )
        # A zero last layer: the model starts as the drag-free ball.
        last = mlp.layers[-1]
        drag = eqx.tree_at(lambda m: m.layers[-1].weight, mlp, jnp.zeros_like(last.weight))
    return Ball(
        jnp.asarray(np.log(cfg.g_init), dtype),
        jnp.asarray(np.log(cfg.e_init / (1 - cfg.e_init)), dtype),
        drag,
    )


def true_ball(cfg: BouncingBallConfig) -> TrueBall:
    c = cfg.drag_coef if cfg.drag == "mlp" else 0.0
    return TrueBall(*(jnp.asarray(x, DTYPE) for x in (cfg.g_true, cfg.e_true, c)))


def fly(t, y, ball):
    """Free flight: y = (h, v), dh/dt = v, dv/dt = the ball's acceleration."""
    del t
    return jnp.stack([y[1], ball.acceleration(y[1])])


def simulate(ball, y0, t_obs, *, bounces: int, horizon: float, solve_kwargs: dict, probe=None):
    """Heights at ``t_obs`` of the ball started at ``y0 = (h0, v0)`` at t = 0, over ``bounces``
    floor impacts; after the last one the ball rests at h = 0.

    Args:
        ball: a :class:`Ball` or :class:`TrueBall`.
        y0: (2,) initial height and velocity.
        t_obs: (N,) times in [0, horizon] (any order).
        bounces: impacts simulated (one solve each; a fixed count, so it jits).
        horizon: longest flight a segment may take (s); a segment that does not land within it
            ends there.
        solve_kwargs: keyword arguments of :func:`ode_jax.odeint` (solver, tolerances, adjoint).

    Returns:
        ``(h, impacts, nfe)``: heights (N,), impact times (bounces,) and the forward NFE.
    """

    # Only the arrays go in as args: the event time's stop_gradient on args fails on non-array
    # leaves such as the drag MLP's activation function (ode_jax's _event.py).
    params, static = eqx.partition(ball, eqx.is_array)

    def field(t, y, params):
        return fly(t, y, eqx.combine(params, static))

    def segment(carry, _):
        t0, y, h = carry
        ts = jnp.stack([t0, t0 + horizon])
        sol = ode_jax.odeint(
            field, y, ts, params, event=FLOOR, dense=True, probe=probe, **solve_kwargs
        )
        t1 = jnp.where(sol.event_happened, sol.event_time, ts[1])
        inside = (t_obs >= t0) & (t_obs < t1)
        # Clipped into the segment so that no NaN (outside the solve) reaches a gradient.
        h_seg = sol.evaluate(jnp.clip(t_obs, t0, t1))[:, 0]
        h = jnp.where(inside, h_seg, h)
        v = sol.event_state[1]
        # The jump: at the floor (h = 0 exactly, as the event defines), v -> -e v.
        y_next = jnp.stack([jnp.zeros_like(v), -ball.e * v])
        return (t1, y_next, h), (t1, sol.stats["nfe"])

    t_start = jnp.zeros((), t_obs.dtype)
    init = (t_start, y0, jnp.zeros_like(t_obs))
    (_, _, h), (impacts, nfe) = jax.lax.scan(segment, init, None, length=bounces)
    return h, impacts, jnp.sum(nfe)


def solve_kwargs(cfg: BouncingBallConfig, **overrides) -> dict:
    return cfg.solve_settings(**overrides).kwargs()


def initial_state(cfg: BouncingBallConfig):
    return jnp.asarray([cfg.h0, cfg.v0], DTYPE)


@eqx.filter_jit
def predict(ball, t, cfg: BouncingBallConfig, tight: bool = False):
    """Heights (N,), impact times (bounces,) and NFE of ``ball`` at the times ``t``."""
    kwargs = solve_kwargs(cfg, **(TRUTH_TOLS if tight else {}))
    return simulate(
        ball, initial_state(cfg), t, bounces=cfg.bounces, horizon=cfg.t_end, solve_kwargs=kwargs
    )


@functools.lru_cache(maxsize=4)
def observations(cfg: BouncingBallConfig):
    """(t_obs, h_obs, h_clean): sorted irregular times in (0, t_end], noisy and true heights,
    numpy float32 (fixed by ``data_seed``, whatever the model seed)."""
    rng = np.random.default_rng(cfg.data_seed)
    t = np.sort(rng.uniform(0.0, cfg.t_end, cfg.n_obs)).astype(np.float32)
    h_clean, impacts, _ = predict(true_ball(cfg), jnp.asarray(t), cfg, tight=True)
    if not float(impacts[-1]) > cfg.t_end:
        raise ValueError(
            f"the true ball lands {cfg.bounces} times before t_end={cfg.t_end}: raise --bounces"
        )
    noise = cfg.noise * rng.standard_normal(cfg.n_obs)
    h_clean = np.asarray(h_clean)
    return t, (h_clean + noise).astype(np.float32), h_clean


def drag_correction(ball, v):
    """The learned (or true) acceleration minus -g: the drag part, at velocities v (m/s)."""
    return jax.vmap(ball.acceleration)(v) + ball.g


def build(cfg: BouncingBallConfig) -> common.Task:
    t_all, h_all, h_clean = observations(cfg)
    t_all_j, h_all_j = jnp.asarray(t_all), jnp.asarray(h_all)
    y0 = initial_state(cfg)
    kwargs = solve_kwargs(cfg)

    @jax.jit
    def get_batch(key):
        if cfg.batch_size == cfg.n_obs:
            return {"t": t_all_j, "h": h_all_j}
        idx = jax.random.choice(key, cfg.n_obs, (cfg.batch_size,), replace=False)
        return {"t": t_all_j[idx], "h": h_all_j[idx]}

    def loss(ball, batch, key, probe):
        del key
        h, _, nfe = simulate(
            ball, y0, batch["t"], bounces=cfg.bounces, horizon=cfg.t_end, solve_kwargs=kwargs,
            probe=probe,
        )  # fmt: skip
        return jnp.mean((h - batch["h"]) ** 2), {"nfe_fwd": nfe, "g": ball.g, "e": ball.e}

    def evaluate(ball):
        h, _, nfe = predict(ball, t_all_j, cfg)
        out = {
            "mse": jnp.mean((h - h_all_j) ** 2),
            "rmse_clean": jnp.sqrt(jnp.mean((h - h_clean) ** 2)),
            "g": ball.g,
            "e": ball.e,
            "nfe": nfe,
        }
        if cfg.drag == "mlp":
            out["drag_at_minus_10"] = drag_correction(ball, -10.0 * jnp.ones(1, DTYPE))[0]
        return out

    return common.Task(
        lambda key: init_ball(cfg, key),
        get_batch,
        loss,
        evaluate,
        ("mse",),
        loss_label="MSE of heights (m²)",
    )


def finish(cfg: BouncingBallConfig, task: common.Task, result: common.TrainResult, out: Path):
    """Figures (trajectory, loss, parameters, drag) and the recovered parameters."""
    ball, truth = result.model, true_ball(cfg)
    t_obs, h_obs, _ = observations(cfg)
    t = np.linspace(0.0, cfg.t_end, 1501, dtype=np.float32)
    h_true, imp_true, _ = predict(truth, jnp.asarray(t), cfg, tight=True)
    h_learned, imp_learned, _ = predict(ball, jnp.asarray(t), cfg)
    h_init, _, _ = predict(task.init_model(jax.random.key(0)), jnp.asarray(t), cfg)
    plot_trajectory(
        out / "trajectory.png", t, (h_true, h_learned, h_init), (t_obs, h_obs),
        (np.asarray(imp_true), np.asarray(imp_learned)), cfg.t_end,
    )  # fmt: skip
    plot_loss(out / "loss.png", result.history, result.evals, cfg.noise)
    plot_parameters(out / "parameters.png", result.history, cfg)
    final = result.evals[-1]
    metrics = {
        "g": float(ball.g),
        "e": float(ball.e),
        "g_true": cfg.g_true,
        "e_true": cfg.e_true,
        "g_rel_err": abs(float(ball.g) - cfg.g_true) / cfg.g_true,
        "e_abs_err": abs(float(ball.e) - cfg.e_true),
        "final_mse": final["mse"],
        "final_rmse_vs_clean": final["rmse_clean"],
        "noise_var": cfg.noise**2,
        "nfe_trajectory": final["nfe"],
        "impacts_true": [float(x) for x in imp_true if x <= cfg.t_end],
        "impacts_learned": [float(x) for x in imp_learned if x <= cfg.t_end],
    }
    if cfg.drag == "mlp":
        v = np.linspace(-15.0, 15.0, 121, dtype=np.float32)
        m_true = np.asarray(drag_correction(truth, jnp.asarray(v)))
        m_learned = np.asarray(drag_correction(ball, jnp.asarray(v)))
        v_true = np.gradient(np.asarray(h_true), t)  # from the fine grid: close enough to shade
        plot_drag(out / "drag.png", v, m_true, m_learned, (v_true.min(), v_true.max()))
        metrics["drag_at_minus_10"] = float(m_learned[np.argmin(np.abs(v + 10))])
        metrics["drag_at_minus_10_true"] = float(m_true[np.argmin(np.abs(v + 10))])
        metrics["drag_rmse_on_minus_15_to_15"] = float(np.sqrt(np.mean((m_learned - m_true) ** 2)))
    metrics["figures"] = sorted(p.name for p in out.glob("*.png"))
    return metrics


def plot_trajectory(path, t, curves, obs, impacts, t_end):
    import matplotlib.pyplot as plt

    h_true, h_learned, h_init = (np.asarray(c) for c in curves)
    imp_true, imp_learned = (x[x <= t_end] for x in impacts)
    fig, ax = plt.subplots(figsize=(9, 3.8))
    ax.plot(t, h_init, color="0.6", ls=":", label="initial guess")
    ax.plot(t, h_true, "k-", lw=1.5, label="true")
    ax.plot(t, h_learned, "C1--", lw=1.5, label="learned")
    ax.plot(*obs, "o", color="C0", ms=4, label="observed (noisy)")
    for i, x in enumerate(imp_true):
        ax.axvline(x, color="k", lw=0.6, ls=":", label="true bounce" if i == 0 else None)
    ax.plot(imp_learned, np.zeros_like(imp_learned), "C1^", ms=8, label="learned bounce")
    ax.set(xlabel="time (s)", ylabel="height (m)", xlim=(0, t_end), title="bouncing ball")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    report.save_figure(fig, path)


def plot_loss(path, history, evals, noise):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    ax.plot([r["step"] for r in history], [r["loss"] for r in history], label="train (batch)")
    ax.plot([r["step"] for r in evals], [r["mse"] for r in evals], "o", label="all observations")
    if noise > 0:
        ax.axhline(noise**2, color="k", ls=":", lw=1, label="noise variance")
    ax.set(xlabel="optimiser step", ylabel="MSE of heights (m²)", yscale="log", title="loss")
    ax.legend(loc="upper right", fontsize=8)
    report.save_figure(fig, path)


def plot_parameters(path, history, cfg: BouncingBallConfig):
    import matplotlib.pyplot as plt

    steps = [0] + [r["step"] for r in history]  # step 0: the initial guess
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    panels = (
        ("g", cfg.g_init, cfg.g_true, "g (m/s²)"),
        ("e", cfg.e_init, cfg.e_true, "e (dimensionless)"),
    )
    for ax, (name, init, truth, label) in zip(axes, panels):
        ax.plot(steps, [init] + [r[name] for r in history], "C1-", label="estimate")
        ax.axhline(truth, color="k", ls="--", lw=1, label="truth")
        ax.set(xlabel="optimiser step", ylabel=label, title=f"{name} over training")
        ax.legend(loc="lower right", fontsize=8)
    report.save_figure(fig, path)


def plot_drag(path, v, m_true, m_learned, v_seen):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    ax.axvspan(*v_seen, color="0.92", label="velocities in the data")
    ax.plot(v, m_true, "k-", label="true: -c v|v|")
    ax.plot(v, m_learned, "C1--", label="learned: m(v) - m(0)")
    ax.set(xlabel="velocity v (m/s, up is positive)", ylabel="drag acceleration (m/s²)")
    ax.set(title="acceleration beyond gravity")
    ax.legend(loc="upper right", fontsize=8)
    report.save_figure(fig, path)


def main(argv=None) -> dict:
    return common.main(BouncingBallConfig, SMOKE, build, finish, argv)


if __name__ == "__main__":
    common.cli.entry(main)
