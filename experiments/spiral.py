"""Spiral demo (torchdiffeq's ode_demo, done properly).

The true system is dy/dt = (y**3) A with A = [[-0.1, 2], [-2, -0.1]], y(0) = [2, 0], sampled at
``data_size`` points on [0, t_end]. A neural ODE learns it from random short windows; it is
judged by integrating the learned field from y(0) over the whole horizon.

    python -m experiments.spiral --out runs/spiral        # --help lists every flag
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

import ode_jax
from configs.spiral import SMOKE, SpiralConfig
from experiments import common
from experiments.common import report
from ode_jax.nn import MLPField, call_field

TRUE_A = ((-0.1, 2.0), (-2.0, -0.1))
TRUE_Y0 = (2.0, 0.0)
DTYPE = jnp.float32


def true_field(t, y, a):
    del t
    return (y**3) @ a


def cube(y):
    return y**3


def times(cfg: SpiralConfig) -> np.ndarray:
    # numpy times: odeint reads concrete times inside jit (a jnp array closed over by a jitted
    # function becomes a tracer there).
    return np.linspace(0.0, cfg.t_end, cfg.data_size, dtype=np.float32)


@functools.lru_cache(maxsize=4)
def ground_truth(cfg: SpiralConfig):
    """The true trajectory at :func:`times`, shape (N, 2), float32, from a tight solve."""
    y0, a = jnp.asarray(TRUE_Y0, DTYPE), jnp.asarray(TRUE_A, DTYPE)
    sol = ode_jax.odeint(true_field, y0, times(cfg), a, solver="dopri5", rtol=1e-7, atol=1e-9)
    return sol.ys


def solve(model, y0, ts, cfg: SpiralConfig, probe=None):
    return cfg.solve_settings().odeint(call_field, y0, ts, model, probe=probe)


def solve_regularised(model, y0, ts, cfg: SpiralConfig, reg: ode_jax.Regulariser, key, probe):
    """A training solve with ``reg``'s penalties; STEER draws the window's last time from
    ``U(t_last - b, t_last + b)`` (the target stays the data at t_last)."""
    k_probe, k_steer = jax.random.split(key)
    if reg.steer > 0:
        t_last = ode_jax.steer_end_time(k_steer, ts[-2], ts[-1], reg.steer, ts.dtype)
        ts = jnp.concatenate([jnp.asarray(ts[:-1]), t_last[None]])
    kwargs = cfg.solve_settings().kwargs()
    return ode_jax.regularised_odeint(
        call_field, y0, ts, model, regulariser=reg, key=k_probe, probe=probe, **kwargs
    )


@eqx.filter_jit
def predict(model, cfg: SpiralConfig):
    """The learned field integrated from the true y(0) over the whole horizon: (N, 2), stats."""
    sol = solve(model, jnp.asarray(TRUE_Y0, DTYPE), times(cfg), cfg)
    return sol.ys, sol.stats


def build(cfg: SpiralConfig) -> common.Task:
    ys = ground_truth(cfg)
    window_ts = times(cfg)[: cfg.batch_time]  # the field is autonomous: every window starts at t=0

    def init_model(key):
        features = cube if cfg.features == "cube" else None
        return MLPField(2, cfg.width, cfg.depth, features=features, dtype=DTYPE, key=key)

    @jax.jit
    def get_batch(key):
        starts = jax.random.randint(key, (cfg.batch_size,), 0, cfg.data_size - cfg.batch_time + 1)
        windows = ys[starts[:, None] + jnp.arange(cfg.batch_time)[None]]  # (B, T, 2)
        return {"y0": windows[:, 0], "target": windows}

    reg = cfg.regulariser(float(window_ts[-1] - window_ts[-2]))

    def loss(model, batch, key, probe):
        if reg is None:
            sol, penalties = solve(model, batch["y0"], window_ts, cfg, probe), {}
        else:
            sol, penalties = solve_regularised(model, batch["y0"], window_ts, cfg, reg, key, probe)
        pred = jnp.swapaxes(sol.ys, 0, 1)  # ys: (T, B, 2)
        fit = jnp.mean(jnp.abs(pred - batch["target"]))
        aux = {"nfe_fwd": sol.stats["nfe"], "fit": fit, **penalties}
        return fit + cfg.penalty(penalties, batch["y0"].size), aux

    def evaluate(model):
        pred, stats = predict(model, cfg)
        err = pred - ys
        return {
            "mae": jnp.mean(jnp.abs(err)),
            "rmse": jnp.sqrt(jnp.mean(err**2)),
            "max_err": jnp.max(jnp.linalg.norm(err, axis=-1)),
            "nfe": stats["nfe"],
        }

    loss_label = "mean |error| over the windows" + (" + penalty" if reg is not None else "")
    return common.Task(
        init_model, get_batch, loss, evaluate, curve_keys=("mae",), loss_label=loss_label
    )


def finish(cfg: SpiralConfig, task: common.Task, result: common.TrainResult, out: Path) -> dict:
    """Figures: trajectories over time, phase portrait, vector fields."""
    ts, ys = times(cfg), np.asarray(ground_truth(cfg))
    pred = np.asarray(predict(result.model, cfg)[0])
    plot_trajectories(out / "trajectories.png", ts, ys, pred)
    plot_phase(out / "phase_portrait.png", ys, pred)
    plot_fields(out / "vector_field.png", result.model)
    return {"figures": sorted(p.name for p in out.glob("*.png"))}


def plot_trajectories(path, ts, ys, pred):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3.8))
    for i, name in enumerate(("x", "y")):
        ax.plot(ts, ys[:, i], f"C{i}-", lw=1.4, label=f"true {name}")
        ax.plot(ts, pred[:, i], f"C{i}--", lw=1.4, label=f"learned {name}")
    ax.set(xlabel="t (time units)", ylabel="state component")
    ax.set_title("trajectories from y(0): true (solid) vs learned (dashed)", fontsize=11)
    # Above the axes: the curves fill the whole panel.
    ax.legend(ncol=4, fontsize=9, loc="lower center", bbox_to_anchor=(0.5, 1.08), frameon=False)
    ax.grid(alpha=0.3)
    report.save_figure(fig, path)


def plot_phase(path, ys, pred):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.2, 5.0))
    ax.plot(ys[:, 0], ys[:, 1], "k-", lw=1.4, label="true")
    ax.plot(pred[:, 0], pred[:, 1], "C1--", lw=1.4, label="learned")
    ax.plot(*TRUE_Y0, "ko", ms=4, label="y(0)")
    ax.set(xlabel="x (state units)", ylabel="y (state units)", aspect="equal")
    ax.set_title("phase portrait, t in [0, 25]", fontsize=11)
    # Below the axes: the spiral fills the whole panel.
    ax.legend(ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.14), frameon=False)
    ax.grid(alpha=0.3)
    report.save_figure(fig, path)


def plot_fields(path, model):
    import matplotlib.pyplot as plt

    g = np.linspace(-2, 2, 21, dtype=np.float32)
    grid = np.stack(np.meshgrid(g, g), -1).reshape(-1, 2)
    true = np.asarray(true_field(0.0, grid, np.asarray(TRUE_A, np.float32)))
    learned = np.asarray(model(0.0, jnp.asarray(grid)))
    fig, axes = plt.subplots(1, 2, figsize=(9, 4.6), sharey=True)
    for ax, field, title in zip(axes, (true, learned), ("true field", "learned field")):
        ax.streamplot(
            g, g, field[:, 0].reshape(21, 21), field[:, 1].reshape(21, 21), color="k", density=1
        )
        ax.set(xlabel="x (state units)", aspect="equal")
        ax.set_title(f"{title} dy/dt", fontsize=11)
    axes[0].set(ylabel="y (state units)")
    report.save_figure(fig, path)


def plot_curve(out, cfg: SpiralConfig):
    """``out/training_curve.png`` from the run's CSV files, named and labelled for the spiral."""
    report.redraw_training_curve(
        out,
        title=f"spiral: MLP field ({cfg.width} units, {cfg.features} features), {cfg.solver}",
        eval_keys=("mae",),
        loss_label=f"window MAE, {cfg.batch_time} points (state units)",
    )


def redraw_figures(out, checkpoint_dir=None) -> list[str]:
    """Redraw every figure of the run folder ``out`` from its files: the training curve from
    its CSV files, the others from the model of its last checkpoint (or ``checkpoint_dir``'s,
    a run with the same config: the evaluation is checked against ``out/metrics.json``)."""
    from experiments.common import checkpoint, loop

    out = Path(out)
    cfg = common.config_from_dict(SpiralConfig, json.loads((out / "config.json").read_text()))
    task = build(cfg)
    like = task.init_model(jax.random.key(0))
    opt_state = loop.optimizer_for(cfg).init(eqx.filter(like, eqx.is_inexact_array))
    loaded = checkpoint.load(Path(checkpoint_dir or out / "checkpoint"), (like, opt_state))
    if loaded is None:
        raise common.cli.UserError(f"no checkpoint in {checkpoint_dir or out / 'checkpoint'}")
    (model, _), _ = loaded
    final = json.loads((out / "metrics.json").read_text())["final_eval"]
    got = {k: float(v) for k, v in task.evaluate(model).items()}
    if any(abs(got[k] - final[k]) > 1e-6 * max(1.0, abs(final[k])) for k in final):
        raise common.cli.UserError(f"the checkpoint gives {got}, not {out}'s {final}")
    plot_curve(out, cfg)
    ts, ys = times(cfg), np.asarray(ground_truth(cfg))
    pred = np.asarray(predict(model, cfg)[0])
    plot_trajectories(out / "trajectories.png", ts, ys, pred)
    plot_phase(out / "phase_portrait.png", ys, pred)
    plot_fields(out / "vector_field.png", model)
    return sorted(p.name for p in out.glob("*.png"))


def main(argv=None) -> dict:
    return common.main(SpiralConfig, SMOKE, build, finish, argv)


if __name__ == "__main__":
    common.cli.entry(main)
