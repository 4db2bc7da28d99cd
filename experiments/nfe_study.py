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
from experiments import odenet
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
    """Four panels, 2 x 2: (a) forward NFE and error vs tolerance, (b) wall time vs NFE,
    (c) backward vs forward NFE, (d) NFE per training step over the epochs."""
    import matplotlib.pyplot as plt

    ok = [r for r in rows if "nfe_fwd" in r]
    tol, nfe = [r["tol"] for r in ok], [r["nfe_fwd"] for r in ok]
    fig, axes = plt.subplots(2, 2, figsize=(11.5, 8.6))
    (ax_a, ax_b), (ax_c, ax_d) = axes
    # (a) Two quantities, two y-axes: each axis label names its curve, in the curve's colour.
    ax_a.loglog(tol, nfe, "o-C0", ms=5)
    ax_a.yaxis.set_major_formatter(plt.matplotlib.ticker.ScalarFormatter())
    ax_a.yaxis.set_minor_formatter(plt.matplotlib.ticker.NullFormatter())
    ax_a.set_yticks(
        [t for t in (10, 15, 20, 30, 40, 60, 80, 120, 160) if min(nfe) / 1.5 < t < 1.5 * max(nfe)]
    )
    ax_a.set(xlabel="solver tolerance (rtol = atol)")
    ax_a.set_ylabel("forward NFE (circles)", color="C0")
    ax_a.set_title("(a) forward NFE and error vs tolerance")
    err_ax = ax_a.twinx()
    err_ax.loglog(tol, [max(r["rel_error"], 1e-12) for r in ok], "s--C1", ms=5)
    err_ax.set_ylabel("relative RMS error of the block output (squares)", color="C1")
    ax_b.plot(nfe, [r["forward_seconds"] for r in ok], "o-C0", ms=5)
    ax_b.set(xlabel="forward NFE", ylabel="forward pass of the test batch (s, median)")
    ax_b.set_title("(b) forward wall time vs NFE")
    full, semi = [r["nfe_bwd"] for r in ok], [r["nfe_bwd_seminorm"] for r in ok]
    same = " (= full norm)" if full == semi else ""
    # Full norm: large hollow circles; seminorm: small crosses on top, so both stay visible.
    ax_c.plot(nfe, full, "o-", color="C0", mfc="none", ms=9, label="sweep, full norm")
    ax_c.plot(nfe, semi, "x--", color="C3", ms=6, label=f"sweep, seminorm{same}")
    if history and "nfe_bwd" in history[0]:
        ax_c.scatter(
            [r["nfe_fwd"] for r in history],
            [r["nfe_bwd"] for r in history],
            s=8,
            c="0.55",
            label="training steps",
        )
    lim = max([1.0] + nfe + full)
    ax_c.plot([0, lim], [0, lim], "k:", lw=0.8, label="backward = forward")
    ax_c.set(xlabel="forward NFE", ylabel="backward NFE (adjoint solve)")
    ax_c.set_title("(c) backward vs forward NFE")
    ax_c.legend(fontsize=9, loc="upper left")
    epochs = [r["step"] / steps_per_epoch for r in history]
    names = {"nfe_fwd": "forward", "nfe_bwd": "backward (adjoint)"}
    for i, (key, name) in enumerate(names.items()):
        if history and key in history[0]:
            ax_d.plot(epochs, [r[key] for r in history], f"C{i}-", lw=1.2, label=name)
    ax_d.set(xlabel="epoch", ylabel="NFE per training step", ylim=(0, None))
    ax_d.set_title("(d) NFE during training")
    ax_d.legend(fontsize=9, loc="lower right")
    for ax in axes.flat:
        ax.grid(alpha=0.3)
    fig.suptitle("NFE study of a trained ODE-Net (Fashion-MNIST test batch)", fontsize=13)
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
    if cfg.smoke and not (run / "config.json").exists():  # a fresh machine: make a tiny run
        run = out / "smoke_odenet_run"
        print(f"--smoke: no odenet run in {cfg.run}; training a --smoke one in {run} first")
        odenet.main(["--smoke", "--out", str(run), "--no-progress"])
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
