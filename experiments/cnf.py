"""Continuous normalizing flows vs planar normalizing flows on 2-D densities (paper Section 4).

Two tasks, one model family each run:

- ``--task density``: fit q to a known unnormalised target ``exp(-U)`` (Rezende & Mohamed's
  U1-U4) by minimising ``E_q[log q(x) + U(x)] = KL(q||p) - log Z`` with base samples pushed
  through the flow (paper Figure 4). Reported: that loss and the KL (adding ``log Z``).
- ``--task mle``: maximum likelihood on fresh samples of a toy dataset every step (paper
  Figure 5, FFJORD's toys). Reported: NLL of fresh test samples (CNFs evaluated with the exact
  trace), and where the true density is known, its entropy (the best reachable NLL) and the gap.

Models: ``nf`` (K planar layers), ``cnf_planar`` (the paper's CNF, M hidden units),
``cnf_mlp`` (FFJORD's ConcatSquash MLP field, exact or Hutchinson trace).

    python -m experiments.cnf --task density --data U2 --model cnf_planar --width 32 --out runs/x
    python -m experiments.cnf grid density --root runs/cnf [--steps 2000] [config flags...]
    python -m experiments.cnf grid mle --root runs/cnf
    python -m experiments.cnf table --root runs/cnf --out results/cnf
    python -m experiments.cnf figures --root runs/cnf --out results/cnf  # figures only

The grids (run names and their settings) are in ``configs/cnf.py``; the tables and the grid
figures in :mod:`experiments.cnf_report`.
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import tyro

from configs.cnf import DENSITY_GRID, MLE_DATA, MLE_GRID, POTENTIAL_NAMES, SMOKE, CNFConfig
from experiments import cnf_report, common
from experiments.common import cli, grid, report
from ode_jax.data import (
    KNOWN_DENSITY,
    potential,
    potential_log_normalizer,
    sample_toy,
    toy_entropy,
)
from ode_jax.nn import CNF, MLPField, PlanarCNFField, PlanarFlow

DTYPE = jnp.float32
TEST_KEY = 2**20  # the seed of the test samples: one fixed test set for every model and seed
# The validation samples' seed, apart from the test set's and from the figures' (TEST_KEY + 1..3):
# choices between runs (a regulariser's weight) are made on these; the test set is for the
# reported number.
VAL_KEY = TEST_KEY + 4
N_SHOW = 2000  # samples drawn in the figures


def init_flow(cfg: CNFConfig, key):
    """A :class:`PlanarFlow` or a :class:`CNF` as configured."""
    if cfg.model == "nf":
        maps = "base_to_data" if cfg.task == "density" else "data_to_base"
        return PlanarFlow(2, cfg.width, maps=maps, dtype=DTYPE, key=key)
    if cfg.model == "cnf_planar":
        field = PlanarCNFField(2, cfg.width, hyper_width=cfg.hyper_width, dtype=DTYPE, key=key)
    else:
        field = MLPField(2, cfg.width, cfg.depth, time="concatsquash", dtype=DTYPE, key=key)
    return CNF(
        field,
        t1=cfg.t1,
        divergence=cfg.divergence,
        noise=cfg.noise,
        settings=cfg.solve_settings(),
        regulariser=cfg.regulariser(cfg.t1),
    )


def _no_solve():
    return {"nfe": jnp.zeros((), jnp.int32)}


def log_prob(flow, x, key=None, probe=None, exact=False, regularise=False):
    """``(log p(x), stats)`` for either model family (a planar NF has no NFE: 0).

    ``regularise``: a training solve with the CNF's regulariser (``stats["penalties"]``)."""
    if isinstance(flow, PlanarFlow):
        return flow.log_prob(x), _no_solve()
    div = "exact" if exact else None
    return flow.log_prob(x, key=key, probe=probe, divergence=div, regularise=regularise)


def sample(flow, z, key=None, probe=None, exact=False, regularise=False):
    """``(x, log q(x), stats)`` for base samples ``z``."""
    if isinstance(flow, PlanarFlow):
        x, logq = flow.sample_with_log_prob(z)
        return x, logq, _no_solve()
    div = "exact" if exact else None
    return flow.sample_with_log_prob(z, key=key, probe=probe, divergence=div, regularise=regularise)


def objective(flow, batch, cfg: CNFConfig, key=None, probe=None, exact=False, regularise=False):
    """The per-task loss: ``E_q[log q + U]`` (density) or the mean NLL (mle); and the solve's
    stats (``stats["penalties"]`` with ``regularise``)."""
    if cfg.task == "density":
        x, logq, stats = sample(flow, batch["z"], key, probe, exact, regularise)
        per_sample = logq + potential(cfg.data, x)
    else:
        logp, stats = log_prob(flow, batch["x"], key, probe, exact, regularise)
        per_sample = -logp
    return per_sample, stats


def draw(cfg: CNFConfig, key, n: int) -> dict:
    """A batch: base samples (density) or data samples (mle)."""
    if cfg.task == "density":
        return {"z": jax.random.normal(key, (n, 2), DTYPE)}
    return {"x": sample_toy(cfg.data, key, n, DTYPE)}


@functools.lru_cache(maxsize=16)
def reference(cfg: CNFConfig) -> dict:
    """The best reachable value: ``log Z`` of the target (density) or the data entropy (mle)."""
    if cfg.task == "density":
        return {"log_z": potential_log_normalizer(cfg.data, n=301 if cfg.smoke else 1201)}
    if cfg.data in KNOWN_DENSITY:
        n = 1_000_000 if not cfg.smoke else 10_000
        h, se = toy_entropy(cfg.data, jax.random.key(TEST_KEY + 1), n, min(n, 100_000))
        return {"entropy": h, "entropy_se": se}
    return {}


@eqx.filter_jit
def _evaluate(flow, batch, cfg):
    per_sample, stats = objective(flow, batch, cfg, exact=True)
    n = per_sample.shape[0]
    return jnp.mean(per_sample), jnp.std(per_sample) / jnp.sqrt(n), stats["nfe"]


def build(cfg: CNFConfig) -> common.Task:
    splits = {
        "val": draw(cfg, jax.random.key(VAL_KEY), cfg.eval_samples),
        "test": draw(cfg, jax.random.key(TEST_KEY), cfg.eval_samples),
    }
    ref = reference(cfg)

    def loss(flow, batch, key, probe):
        per_sample, stats = objective(flow, batch, cfg, key, probe, regularise=cfg.reg != "none")
        fit, penalties = jnp.mean(per_sample), stats.get("penalties", {})
        size = per_sample.shape[0] * 2  # the flow's state: (N, 2)
        aux = {"nfe_fwd": stats["nfe"], **({"fit": fit, **penalties} if penalties else {})}
        return fit + cfg.penalty(penalties, size), aux

    def evaluate(flow):
        """Validation and test loss (or NLL) with standard errors, and each split's forward
        NFE: ``val_nfe``, and ``nfe`` for the test samples."""
        name = "loss" if cfg.task == "density" else "nll"
        out = {}
        for split, batch in splits.items():
            mean, se, nfe = _evaluate(flow, batch, cfg)
            out.update({f"{split}_{name}": mean, f"{split}_{name}_se": se})
            out["val_nfe" if split == "val" else "nfe"] = nfe
        if "log_z" in ref:
            out["kl"] = out["test_loss"] + ref["log_z"]
        if "entropy" in ref:
            out["gap"] = out["test_nll"] - ref["entropy"]
        return out

    return common.Task(
        functools.partial(init_flow, cfg),
        jax.jit(lambda key: draw(cfg, key, cfg.batch_size)),
        loss,
        evaluate,
        curve_keys=(),
        loss_label=(
            "KL(q || p) - log Z (nats)"
            if cfg.task == "density"
            else "negative log-likelihood (nats)"
        )
        + (" + penalty" if cfg.reg != "none" else ""),
    )


def grid_points(cfg: CNFConfig) -> np.ndarray:
    g = np.linspace(-cfg.grid_lim, cfg.grid_lim, cfg.grid_size, dtype=np.float32)
    return np.stack(np.meshgrid(g, g, indexing="xy"), -1)  # (G, G, 2); [i, j] = (g[j], g[i])


def target_density(cfg: CNFConfig, pts) -> np.ndarray:
    """The target on the grid: ``exp(-U)/Z`` (density) or a normalised histogram (mle)."""
    if cfg.task == "density":
        u = np.asarray(potential(cfg.data, jnp.asarray(pts)), np.float64)
        return np.exp(-u - reference(cfg)["log_z"])
    x = np.asarray(sample_toy(cfg.data, jax.random.key(TEST_KEY + 2), 200_000))
    edges = np.linspace(-cfg.grid_lim, cfg.grid_lim, cfg.grid_size + 1)
    hist, _, _ = np.histogram2d(x[:, 1], x[:, 0], bins=(edges, edges), density=True)
    return hist


@eqx.filter_jit
def _grid_log_prob(flow, pts):
    return log_prob(flow, pts, exact=True)[0]


@eqx.filter_jit
def _samples(flow, z):
    return sample(flow, z, exact=True)[0]


def finish(cfg: CNFConfig, task: common.Task, result: common.TrainResult, out: Path) -> dict:
    """Density on a grid, samples, transport over time (CNF); figures; summary numbers."""
    flow = result.model
    pts = grid_points(cfg)
    logq = np.asarray(_grid_log_prob(flow, jnp.asarray(pts.reshape(-1, 2)))).reshape(pts.shape[:2])
    z = jax.random.normal(jax.random.key(TEST_KEY + 3), (N_SHOW, 2), DTYPE)
    arrays = dict(
        grid=pts,
        log_q=logq,
        target=target_density(cfg, pts),
        samples=np.asarray(_samples(flow, z)),
    )
    if isinstance(flow, CNF):
        ts = np.linspace(flow.t1, flow.t0, 6, dtype=np.float32)
        arrays["transport_ts"] = ts
        # ts closed over: odeint wants concrete times
        transport = eqx.filter_jit(lambda f, y: f.transport(y, ts)[0])
        arrays["transport"] = np.asarray(transport(flow, z))
        plot_transport(out / "transport.png", cfg, arrays)
    np.savez_compressed(out / "density.npz", **arrays)
    plot_run(out / "density.png", cfg, arrays)
    plot_curve(out / "training_curve.png", cfg, result)  # linear scale: losses can be < 0
    hist = result.history
    timed = max(len(hist) and hist[-1]["step"] - 1, 1)
    train_s = result.timing["train_seconds"] - result.timing["first_step_seconds"]
    tail = hist[-max(1, len(hist) // 10) :]
    return {
        "seconds_per_iter": train_s / timed,
        "nfe_fwd_last": float(np.mean([r["nfe_fwd"] for r in tail])) if tail else 0.0,
        "nfe_bwd_last": float(np.mean([r["nfe_bwd"] for r in tail])) if tail else 0.0,
        "grid_mass": float(np.exp(logq).sum() * (pts[0, 1, 0] - pts[0, 0, 0]) ** 2),
        **reference(cfg),
    }


def plot_run(path, cfg: CNFConfig, arrays: dict):
    import matplotlib.pyplot as plt

    lim = cfg.grid_lim
    fig, axes = plt.subplots(1, 3, figsize=(10, 3.6))
    cnf_report.show_density(axes[0], arrays["target"], lim)
    cnf_report.show_density(axes[1], np.exp(arrays["log_q"]), lim)
    axes[0].set_title(f"target {cfg.data}")
    axes[1].set_title("model density")
    s = arrays["samples"]
    axes[2].scatter(s[:, 0], s[:, 1], s=1, alpha=0.5)
    axes[2].set(xlim=(-lim, lim), ylim=(-lim, lim), title="model samples", aspect="equal")
    axes[2].set(xticks=[], yticks=[])
    fig.suptitle(f"{cnf_report.label(dataclasses.asdict(cfg))} on {cfg.data}")
    report.save_figure(fig, path)


def plot_curve(path, cfg: CNFConfig, result: common.TrainResult):
    name = "loss" if cfg.task == "density" else "nll"
    what = "E_q[log q + U]" if cfg.task == "density" else "NLL"
    report.plot_training_curve(
        path,
        result.history,
        result.evals,
        (f"val_{name}",),
        title=f"CNF experiment: {cnf_report.label(dataclasses.asdict(cfg))} on {cfg.data}",
        loss_label=f"training {what} per batch (nats)",
    )


def plot_transport(path, cfg: CNFConfig, arrays: dict, title: str | None = None):
    """Base samples (left, t = t1) carried by the learned field to the data (right, t = 0)."""
    import matplotlib.pyplot as plt

    xs, ts, lim = arrays["transport"], arrays["transport_ts"], cfg.grid_lim
    fig, axes = plt.subplots(1, len(ts), figsize=(2.2 * len(ts), 2.4))
    colour = np.arctan2(xs[0, :, 1], xs[0, :, 0])  # colour by the base sample's angle
    for ax, x, t in zip(axes, xs, ts):
        ax.scatter(x[:, 0], x[:, 1], s=1, c=colour, cmap="hsv")
        ax.set(xlim=(-lim, lim), ylim=(-lim, lim), aspect="equal", xticks=[], yticks=[])
        ax.set_title(f"t = {t:.2f}")
    fig.suptitle(title or f"{cfg.data}: samples transported from N(0, I) (t = t1) to data (t = 0)")
    report.save_figure(fig, path)


# -- subcommands ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class GridArgs:
    """``grid {density,mle}``: every run of a grid that has no metrics.json yet; any other
    flag is a config flag given to every run (a run's own grid settings win)."""

    task: tyro.conf.Positional[Literal["density", "mle"]]  # which grid
    root: str = "runs/cnf"  # runs go to ROOT/<task>/<data>/<run>[_s<seed>]
    data: str = ""  # comma-separated subset of the targets / datasets; empty: all
    runs: str = ""  # comma-separated subset of the grid's run names; empty: all
    seed: int = 0  # seed of every run (folders of seed s > 0 end in _s<s>)


def run_grid(argv) -> list:
    """Run every config of a grid that has no ``metrics.json`` yet, one after another."""
    args, extra = tyro.cli(
        GridArgs, args=argv, prog=cli.prog("cnf", "grid"), return_unknown_args=True
    )
    names = POTENTIAL_NAMES if args.task == "density" else MLE_DATA
    runs = DENSITY_GRID if args.task == "density" else MLE_GRID
    data = grid.subset(args.data, names, "--data")
    chosen = grid.subset(args.runs, [n for n, _ in runs], "--runs")
    suffix = f"_s{args.seed}" if args.seed else ""
    points = [
        (
            Path(args.root) / args.task / d / (name + suffix),
            # The run's own settings come last: they win over the shared flags.
            ["--task", args.task, "--data", d, "--seed", str(args.seed), *extra]
            + [f"--{k.replace('_', '-')}={v}" for k, v in overrides.items()],
        )
        for d in data
        for name, overrides in runs
        if name in chosen
    ]
    return grid.run_grid(points, train)


@dataclasses.dataclass(frozen=True)
class TableArgs:
    root: str = "runs/cnf"  # the grids' runs (ROOT/<task>/<data>/<run>)
    out: str = "results/cnf"  # folder for the tables and figures


def _table(args: TableArgs) -> str:
    table = cnf_report.write_table(args.root, args.out)
    print(table)
    return table


def _figures(args: TableArgs) -> list[str]:
    drawn = cnf_report.write_figures(args.root, args.out)
    print(f"redrew {', '.join(drawn) or 'nothing'} in {args.out}")
    return drawn


def train(argv) -> dict:
    return common.main(CNFConfig, SMOKE, build, finish, argv)


def main(argv=None):
    return cli.dispatch(
        "cnf",
        argv,
        train,
        {
            "grid": cli.Subcommand(None, run_grid, "run a grid (density or mle) of configs"),
            "table": cli.Subcommand(TableArgs, _table, "tables and figures of finished runs"),
            "figures": cli.Subcommand(TableArgs, _figures, "only the figures of finished runs"),
        },
    )


if __name__ == "__main__":
    cli.entry(main)
