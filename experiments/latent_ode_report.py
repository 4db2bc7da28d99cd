"""Table 2 and figures from finished latent-ODE runs (``python -m experiments.latent_ode table``).

The test spirals are read here and only here: each run's checkpoint kept on validation is
scored once on them, giving one row per (model, n_obs, seed) of ``metrics.csv``; ``table.md``
holds the mean +- std over seeds; the figures draw the same test spirals.
"""

from __future__ import annotations

import csv
from pathlib import Path

import jax
import numpy as np

from configs.latent_ode import PAPER_RMSE, LatentODEConfig
from experiments import latent_ode
from experiments.common import report

COLORS = {"latent_ode": "C0", "rnn": "C3", "rnn_gap": "C2"}
COLUMNS = (
    "model", "n_obs", "seed", "extrap_rmse_val", "extrap_rmse_test", "interp_rmse_test",
    "extrap_rmse_test_noisy", "interp_rmse_val", "best_step", "steps", "run",
)  # fmt: skip


def score_runs(run_dirs) -> list[dict]:
    """One row per run: its kept checkpoint scored on validation and (once) on test."""
    loaded = [latent_ode.load_run(d) for d in run_dirs]
    latent_ode.check_same_data([cfg for cfg, _, _ in loaded])
    rows = []
    for d, (cfg, model, best) in zip(run_dirs, loaded):
        val = latent_ode.scores(model, cfg, latent_ode.make_split(cfg, "val"), "")
        test = latent_ode.scores(model, cfg, latent_ode.make_split(cfg, "test"), "")
        rows.append(
            dict(
                model=cfg.model,
                n_obs=cfg.n_obs,
                seed=cfg.seed,
                extrap_rmse_val=val["extrap"],
                extrap_rmse_test=test["extrap"],
                interp_rmse_test=test["interp"],
                extrap_rmse_test_noisy=test["extrap_noisy"],
                interp_rmse_val=val["interp"],
                best_step=best["step"],
                steps=cfg.steps,
                run=str(d),
            )
        )
    rows.sort(key=lambda r: (latent_ode.MODELS.index(r["model"]), r["n_obs"], r["seed"]))
    return rows


def mean_std(values) -> str:
    """``mean ± std`` (sample std, ddof 1) and the number of seeds when not 3."""
    v = np.asarray(values, float)
    std = v.std(ddof=1) if v.size > 1 else float("nan")
    count = "" if v.size == 3 else f" ({v.size} seeds)"
    return f"{v.mean():.4f} ± {std:.4f}{count}"


def table_markdown(rows: list[dict]) -> str:
    ns = sorted({r["n_obs"] for r in rows})
    head = "| Model | " + " | ".join(f"n = {n}" for n in ns) + " |\n"
    lines = [head, "|---|" + "---|" * len(ns) + "\n"]
    sections = (
        ("extrap_rmse_test", "extrapolation RMSE, test, vs noise-free path"),
        ("extrap_rmse_val", "extrapolation RMSE, validation"),
        ("interp_rmse_test", "RMSE inside the window, test, vs noise-free path"),
        ("extrap_rmse_test_noisy", "extrapolation RMSE, test, vs noisy observations"),
    )
    for key, what in sections:
        lines.append(f"| *{what}* |" + " |" * len(ns) + "\n")
        for name in latent_ode.MODELS:
            if key == "extrap_rmse_test" and name in PAPER_RMSE:
                paper = " | ".join(f"{PAPER_RMSE[name].get(n, float('nan')):.4f}" for n in ns)
                paper_label = "Latent ODE" if name == "latent_ode" else "RNN"
                lines.append(f"| {paper_label} (paper) | {paper} |\n")
            cells = []
            for n in ns:
                vals = [r[key] for r in rows if r["model"] == name and r["n_obs"] == n]
                cells.append(mean_std(vals) if vals else "-")
            if any(c != "-" for c in cells):
                lines.append(f"| {latent_ode.LABELS[name]} | " + " | ".join(cells) + " |\n")
    lines.append("\nmean ± sample std over seeds; paper rows: Chen et al. 2018, Table 2.\n")
    return "".join(lines)


def write_results(run_dirs, out) -> str:
    """Score the runs, write ``metrics.csv``, ``table.md`` and the figures into ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    run_dirs = [Path(d) for d in run_dirs if Path(d).is_dir()]  # a glob may catch run logs
    rows = score_runs(run_dirs)
    with open(out / "metrics.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    table = table_markdown(rows)
    (out / "table.md").write_text(table)
    for n in sorted({r["n_obs"] for r in rows}):
        at_n = [r for r in rows if r["n_obs"] == n]
        plot_training_curves(out / f"training_curves_n{n}.png", n, at_n)
        first = {}  # the lowest seed of each model: the runs Figure 6 draws
        for r in sorted(at_n, key=lambda r: r["seed"]):
            first.setdefault(r["model"], Path(r["run"]))
        if "latent_ode" in first:
            plot_figure6(out / f"figure6_n{n}.png", n, first)
    return table


# --- figures ---------------------------------------------------------------------------------


def _read_csv(path: Path) -> list[dict]:
    return report.read_csv(path) if path.exists() else []


def plot_run_curve(path, cfg: LatentODEConfig, history: list[dict], evals: list[dict]):
    """One run: its training loss on a linear axis (the latent ODE's negative ELBO per
    observed coordinate goes below zero), train and validation extrapolation RMSE (log)."""
    import matplotlib.pyplot as plt

    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(9, 3.4))
    ax0.plot([r["step"] for r in history], [r["loss"] for r in history], "C0-", lw=1)
    ax0.set(xlabel="step", ylabel=_loss_label(cfg.model), title="training loss")
    _loss_axis(ax0, cfg.model)
    for key, style in (("train_extrap", "C1o-"), ("val_extrap", "C2o-")):
        ax1.plot([r["step"] for r in evals], [r[key] for r in evals], style, ms=3, label=key)
    ax1.set(xlabel="step", ylabel="extrapolation RMSE (position units)", yscale="log")
    ax1.set_title("train / validation")
    ax1.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.suptitle(f"{latent_ode.LABELS[cfg.model]}, n = {cfg.n_obs}, seed {cfg.seed}")
    report.save_figure(fig, path)


def _loss_axis(ax, model: str):
    """The latent ODE's loss falls from hundreds to below zero: symlog (linear in [-1, 1]);
    the RNNs' squared error stays positive: log."""
    if model == "latent_ode":
        ax.set_yscale("symlog", linthresh=1.0)
        ax.axhline(0.0, color="0.6", lw=0.6)
    else:
        ax.set_yscale("log")


def _loss_label(model: str) -> str:
    if model == "latent_ode":
        return "-ELBO per observed coordinate (nats)"
    return "next-value MSE (position units²)"


def plot_training_curves(path, n: int, rows: list[dict]):
    """All runs at one n: the latent ODE's loss (linear), the RNNs' loss (log, positive) and
    every model's validation extrapolation RMSE, one line per seed."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for r in rows:
        run = Path(r["run"])
        hist, evals = _read_csv(run / "history.csv"), _read_csv(run / "evals.csv")
        c, name = COLORS[r["model"]], r["model"]
        label = (
            f"{latent_ode.LABELS[name]}"
            if r["seed"] == min(q["seed"] for q in rows if q["model"] == name)
            else None
        )
        ax = axes[0] if name == "latent_ode" else axes[1]
        ax.plot([h["step"] for h in hist], [h["loss"] for h in hist], c, lw=0.8, alpha=0.8)
        axes[2].plot(
            [e["step"] for e in evals], [e["val_extrap"] for e in evals], c, lw=1, label=label
        )
    axes[0].set(xlabel="step", ylabel=_loss_label("latent_ode"), title="latent ODE: train loss")
    _loss_axis(axes[0], "latent_ode")
    axes[1].set(xlabel="step", ylabel=_loss_label("rnn"), yscale="log", title="RNNs: train loss")
    axes[2].set(
        xlabel="step",
        ylabel="extrapolation RMSE (position units)",
        yscale="log",
        title="validation extrapolation RMSE",
    )
    fig.legend(loc="lower center", ncol=3, fontsize=8, bbox_to_anchor=(0.5, 0.0))
    fig.suptitle(f"training curves, n = {n} (one line per seed; train and validation only)")
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _pick_spirals(clockwise: np.ndarray, k: int) -> np.ndarray:
    """The first k/2 counter-clockwise and the first k/2 clockwise spirals."""
    half = k // 2
    return np.concatenate([np.flatnonzero(~clockwise)[:half], np.flatnonzero(clockwise)[:half]])


def plot_figure6(path, n: int, runs: dict):
    """Paper Figure 6 analogue on the test spirals: each model's reconstruction in the window
    and its extrapolation (one row per model, the same spirals in every row), and the latent
    ODE's latent trajectories projected on their first two principal components, coloured by
    time, one panel per direction."""
    import matplotlib.pyplot as plt
    from matplotlib.collections import LineCollection

    loaded = {name: latent_ode.load_run(d) for name, d in runs.items()}
    cfg = loaded["latent_ode"][0]
    test = latent_ode.make_split(cfg, "test")
    k = cfg.num_plot
    rows_plot = _pick_spirals(test.clockwise, k)
    many = _pick_spirals(test.clockwise, min(40, cfg.num_test))
    names = [m for m in latent_ode.MODELS if m in loaded]
    fig = plt.figure(figsize=(3.1 * k + 1.5, 3.0 * (len(names) + 1.3)), layout="constrained")
    grid = fig.add_gridspec(len(names) + 1, k)
    W = cfg.n_grid
    for i, name in enumerate(names):
        mcfg, model, _ = loaded[name]
        data = test.take(rows_plot)
        x, t = data.observed()
        pred = jax.tree.map(np.asarray, latent_ode._predict_jit(model, mcfg, x, t, data.idx))
        for j in range(k):
            ax = fig.add_subplot(grid[i, j])
            ax.plot(*data.clean[j, :W].T, color="0.7", lw=3, label="true path (window)")
            ax.plot(*data.clean[j, W:].T, color="0.7", lw=3, ls=":", label="true path (future)")
            ax.plot(*x[j].T, "k.", ms=3, label=f"{n} noisy observations")
            if name == "latent_ode":
                ax.plot(
                    *pred["window"][j].T, "-", color=COLORS[name], lw=1.2, label="reconstruction"
                )
            else:
                ax.plot(*pred["window"][j].T, ".", color=COLORS[name], ms=2, label="one-step preds")
            ax.plot(*pred["extrap"][j].T, "--", color=COLORS[name], lw=1.5, label="extrapolation")
            ax.set_aspect("equal")
            ax.tick_params(labelsize=6)
            if j == 0:
                ax.set_ylabel(f"{latent_ode.LABELS[name]}\ny", fontsize=8)
            ax.set_xlabel("x", fontsize=7)
            if i == 0:
                ax.set_title("clockwise" if data.clockwise[j] else "counter-clockwise", fontsize=8)
            if j == k - 1:
                ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    # Latent trajectories of 40 test spirals, PCA fitted on all of them together.
    _, lmodel, _ = loaded["latent_ode"]
    data = test.take(many)
    x, t = data.observed()
    z = np.asarray(latent_ode._predict_jit(lmodel, cfg, x, t, data.idx)["z"])  # (S, T, L)
    flat = z.reshape(-1, z.shape[-1])
    centre = flat.mean(0)
    _, _, vt = np.linalg.svd(flat - centre, full_matrices=False)
    pc = (z - centre) @ vt[:2].T  # (S, T, 2)
    half = max(1, k // 2)
    norm = plt.Normalize(test.ts[0], test.ts[-1])
    for p, (cw, title) in enumerate(((False, "counter-clockwise"), (True, "clockwise"))):
        ax = fig.add_subplot(grid[len(names), p * half : (p + 1) * half])
        for s in np.flatnonzero(data.clockwise == cw):
            seg = np.stack([pc[s, :-1], pc[s, 1:]], axis=1)
            lc = LineCollection(seg, cmap="viridis", norm=norm, lw=1)
            lc.set_array(test.ts[:-1])
            ax.add_collection(lc)
            ax.plot(*pc[s, W - 1], "k.", ms=2)
        mine = pc[data.clockwise == cw]
        pad = 0.05 * np.ptp(mine.reshape(-1, 2), axis=0)
        lo, hi = mine.min((0, 1)) - pad, mine.max((0, 1)) + pad
        ax.set(xlim=(lo[0], hi[0]), ylim=(lo[1], hi[1]))
        ax.set(xlabel="latent PC 1", ylabel="latent PC 2")
        ax.set_title(f"latent ODE: z(t) of {title} test spirals (dot: end of window)", fontsize=8)
    cbar = fig.colorbar(lc, ax=fig.axes[-2:], fraction=0.03)
    cbar.set_label("t (time units; 1 rad of rotation per unit)")
    fig.suptitle(
        f"Figure 6 analogue, n = {n}: test spirals, window t < {test.ts[W]:.1f}, then "
        f"{cfg.n_extrap} extrapolated steps"
    )
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
