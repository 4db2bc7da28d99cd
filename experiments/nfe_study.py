"""Paper Figure 3 on a trained ODE-Net: what the ODE block's number of function evaluations
(NFE) costs and buys.

(a) forward NFE and numerical error against the solver tolerance, (b) wall time of a forward
pass against its NFE, (c) backward against forward NFE, with and without the seminorm
(Kidger et al. 2021), and during training, (d) NFE over training epochs (from the run's
history). Reads an ``experiments.odenet`` run folder; writes CSV and PNG files to ``--out``.

    python -m experiments.nfe_study --run runs/odenet --out results/nfe_study
    python -m experiments.nfe_study plot --run runs/odenet --out results/nfe_study  # redraw only
"""

from __future__ import annotations

import time
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import tyro

import ode_jax
from configs.odenet import NFE_SMOKE, NFEStudyConfig
from experiments.common import cli, report
from experiments.common.images import cross_entropy, load_splits, to_float
from experiments.odenet import load_config, load_model


def _solve(block, h0, tol, seminorm=False, probe=None):
    """The ODE block's own solve at rtol = atol = ``tol``, traced (one compilation for every
    tolerance), differentiated by the continuous adjoint (also for an RK-Net run)."""
    adjoint = ode_jax.ContinuousAdjoint(seminorm=seminorm)
    h1, stats = block.solve(h0, probe, rtol=tol, atol=tol, adjoint=adjoint)
    return h1, stats["nfe"]


@eqx.filter_jit
def _forward(model, x, tol):
    return _solve(model.body, model.downsample(x), tol)


@eqx.filter_jit
def _backward_nfe(model, x, labels, tol, seminorm: bool):
    def loss(model, probe):
        h1, _ = _solve(model.body, model.downsample(x), tol, seminorm, probe)
        return cross_entropy(model.head(h1), labels)

    _, probe_grad = jax.grad(loss, argnums=(0, 1))(model, ode_jax.make_probe(jnp.float32))
    return ode_jax.probe_stats(probe_grad)["nfe"]


def _timed(fn, repeats: int):
    out = jax.block_until_ready(fn())  # compiles (once) and warms up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return out, float(np.median(times))


def sweep(model, x, labels, cfg: NFEStudyConfig) -> list[dict]:
    """One row per tolerance: forward NFE, seconds, error vs the reference, backward NFEs."""
    ref, _ = _forward(model, x, jnp.float32(cfg.ref_tol))
    scale = float(jnp.sqrt(jnp.mean(ref**2)))
    rows = []
    for tol in cfg.tols:
        tol_arr = jnp.float32(tol)
        row = {"tol": tol}
        try:
            (h1, nfe), seconds = _timed(lambda t=tol_arr: _forward(model, x, t), cfg.repeats)
            row.update(nfe_fwd=int(nfe), forward_seconds=seconds)
            row["rel_error"] = float(jnp.sqrt(jnp.mean((h1 - ref) ** 2))) / scale
            for seminorm in (False, True):
                nfe_b = _backward_nfe(model, x, labels, tol_arr, seminorm)
                row["nfe_bwd_seminorm" if seminorm else "nfe_bwd"] = int(nfe_b)
        except Exception as e:  # a too-tight tolerance may exhaust max_steps: record, go on
            row["failed"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
        rows.append(row)
        print({k: f"{v:.4g}" if isinstance(v, float) else v for k, v in row.items()}, flush=True)
    return rows


def read_history(run: Path) -> list[dict]:
    return report.read_csv(run / "history.csv")


def plot(path, rows: list[dict], history: list[dict], steps_per_epoch: float):
    import matplotlib.pyplot as plt

    ok = [r for r in rows if "nfe_fwd" in r]
    tol, nfe = [r["tol"] for r in ok], [r["nfe_fwd"] for r in ok]
    fig, axes = plt.subplots(1, 4, figsize=(17, 4))
    ax = axes[0]
    # No legend: each curve is named by its own axis, in the curve's colour.
    ax.loglog(tol, nfe, "o-C0")
    ax.set(xlabel="tolerance (rtol = atol)", title="(a) NFE vs tolerance")
    ax.set_ylabel("forward NFE (circles)", color="C0")
    err_ax = ax.twinx()
    err_ax.loglog(tol, [max(r["rel_error"], 1e-12) for r in ok], "s--C1")
    err_ax.set_ylabel("relative error of y(1) (squares)", color="C1")
    axes[1].plot(nfe, [r["forward_seconds"] for r in ok], "o-")
    axes[1].set(xlabel="forward NFE", ylabel="seconds", title="(b) forward wall time vs NFE")
    ax = axes[2]
    ax.plot(nfe, [r["nfe_bwd"] for r in ok], "o-", label="sweep, full norm")
    ax.plot(nfe, [r["nfe_bwd_seminorm"] for r in ok], "s-", label="sweep, seminorm")
    if history and "nfe_bwd" in history[0]:
        ax.scatter(
            [r["nfe_fwd"] for r in history],
            [r["nfe_bwd"] for r in history],
            s=6,
            c="gray",
            label="during training",
        )
    lim = max([1.0] + nfe + [r["nfe_bwd"] for r in ok])
    ax.plot([0, lim], [0, lim], "k:", lw=0.8, label="backward = forward")
    ax.set(xlabel="forward NFE", ylabel="backward NFE", title="(c) backward vs forward NFE")
    ax.legend(fontsize=8)
    ax = axes[3]
    epochs = [r["step"] / steps_per_epoch for r in history]
    for key in ("nfe_fwd", "nfe_bwd"):
        if history and key in history[0]:
            ax.plot(epochs, [r[key] for r in history], label=key)
    ax.set(xlabel="epoch", ylabel="NFE per step", title="(d) NFE during training")
    ax.legend(fontsize=8)
    report.save_figure(fig, path)


def _steps_per_epoch(run_cfg, splits=None) -> float:
    splits = load_splits(run_cfg.data_dir, run_cfg.val_size) if splits is None else splits
    return len(splits["train"][0]) / run_cfg.batch_size


def replot(argv) -> None:
    """``plot --run RUN --out OUT``: redraw ``OUT/nfe_study.png`` from the CSV files in ``OUT``."""
    cfg = tyro.cli(NFEStudyConfig, args=argv, prog=cli.prog("nfe_study", "plot"))
    out = Path(cfg.out)
    missing = [n for n in ("tolerance_sweep.csv", "training_nfe.csv") if not (out / n).is_file()]
    if missing:
        raise cli.UserError(f"--out {out} has no {', '.join(missing)}: run the study there first")
    rows = report.read_csv(out / "tolerance_sweep.csv")
    history = report.read_csv(out / "training_nfe.csv")
    run_cfg = load_config(cfg.run)  # for the epoch length; the model itself is not needed
    plot(out / "nfe_study.png", rows, history, _steps_per_epoch(run_cfg))
    print(f"redrew {out}/nfe_study.png")


def main(argv=None) -> list[dict] | None:
    return cli.dispatch(
        "nfe_study",
        argv,
        study,
        {"plot": cli.Subcommand(None, replot, "redraw nfe_study.png from the CSV files in --out")},
    )


def study(argv) -> list[dict]:
    """The study on the run ``--run``, written to ``--out``."""
    default = NFEStudyConfig(smoke=True, **NFE_SMOKE) if "--smoke" in argv else NFEStudyConfig()
    cfg = tyro.cli(NFEStudyConfig, default=default, args=argv, prog=cli.prog("nfe_study"))
    run, out = Path(cfg.run), Path(cfg.out)
    model, run_cfg = load_model(run)
    if run_cfg.model == "resnet":
        raise cli.UserError(f"{run} holds a ResNet; the NFE study needs an ODE-Net or RK-Net run")
    out.mkdir(parents=True, exist_ok=True)
    splits = load_splits(run_cfg.data_dir, run_cfg.val_size)
    images, labels = splits["test"]
    x, y = to_float(jnp.asarray(images[: cfg.batch])), jnp.asarray(labels[: cfg.batch])
    rows = sweep(model, x, y, cfg)
    history = read_history(run)
    report.write_csv(out / "tolerance_sweep.csv", rows)
    report.write_csv(out / "training_nfe.csv", history)
    plot(out / "nfe_study.png", rows, history, _steps_per_epoch(run_cfg, splits))
    print(f"wrote {out}/ (tolerance_sweep.csv, training_nfe.csv, nfe_study.png)")
    return rows


if __name__ == "__main__":
    cli.entry(main)
