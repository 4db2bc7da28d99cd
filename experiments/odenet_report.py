"""Reports of finished ODE-Net runs (paper Table 1): the table, the curves, step profiles.

python -m experiments.odenet table runs/odenet/{odenet,resnet,rknet} --out results/odenet
python -m experiments.odenet profile --out results/odenet/step_profile.json
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

from configs.odenet import MODELS, SMOKE, ODENetConfig
from experiments import common
from experiments.common import report
from experiments.odenet import profile_step

# Chen et al. (2018), Table 1: MNIST test error and parameters.
PAPER = {"resnet": (0.0041, 0.60e6), "rknet": (0.0047, 0.22e6), "odenet": (0.0042, 0.22e6)}
LABELS = {"resnet": "ResNet", "rknet": "RK-Net", "odenet": "ODE-Net"}
RUN_FILES = ("config.json", "metrics.json", "history.csv", "evals.csv", "training_curve.png")


TABLE_COLUMNS = (
    ("label", "model", "{}"),
    ("test_error", "test error", "{:.2%}"),
    ("val_error", "val error", "{:.2%}"),
    ("params", "params", "{:,}"),
    ("nfe", "NFE fwd / bwd per step", "{}"),
    ("peak_mib", "step peak MiB", "{:.0f}"),
    ("step_seconds", "step s", "{:.2f}"),
    ("epoch_seconds", "epoch s", "{:.0f}"),
    ("steps", "steps", "{}"),
)


def write_table(run_dirs, out) -> str:
    """Collect finished runs into ``out``: per-model files, metrics.json, table.md, curves.png."""
    out = Path(out)
    runs = []
    for d in map(Path, run_dirs):
        if not (d / "metrics.json").exists():
            raise common.cli.UserError(f"{d} has no metrics.json (not a finished odenet run)")
        metrics = json.loads((d / "metrics.json").read_text())
        runs.append((metrics["model"], metrics, d))
        (out / metrics["model"]).mkdir(parents=True, exist_ok=True)
        for name in RUN_FILES:
            shutil.copy(d / name, out / metrics["model"] / name)
    runs.sort(key=lambda r: list(PAPER).index(r[0]))
    report.write_json(out / "metrics.json", {m: metrics for m, metrics, _ in runs})
    nan, rows = math.nan, []
    for m, met, _ in runs:
        step = met.get("train_step", {})
        nfe = f"{met['nfe_fwd_per_step']:.1f} / {met['nfe_bwd_per_step']:.1f}"
        rows.append(
            dict(
                met,
                label=f"{LABELS[m]} (ours, Fashion-MNIST)",
                nfe="–" if m == "resnet" else nfe,
                peak_mib=step.get("peak_mib", nan),
                step_seconds=step.get("step_seconds", nan),
            )
        )
    for m, (err, params) in PAPER.items():
        blank = dict.fromkeys(("val_error", "peak_mib", "step_seconds", "epoch_seconds"), nan)
        rows.append(
            dict(
                blank,
                label=f"{LABELS[m]} (paper, MNIST)",
                test_error=err,
                params=int(params),
                nfe="",
            )
        )
        rows[-1]["steps"] = ""
    columns = [(k, head, report.number(spec)) for k, head, spec in TABLE_COLUMNS]
    table = report.markdown_table(rows, columns) + "\n"
    (out / "table.md").write_text(table)
    _plot_curves(out / "curves.png", runs)
    return table


def _plot_curves(path, runs):
    fig, (ax_loss, ax_err) = report.plt.subplots(1, 2, figsize=(10, 4))
    for m, _, d in runs:
        hist, evals = report.read_csv(d / "history.csv"), report.read_csv(d / "evals.csv")
        ax_loss.plot([r["step"] for r in hist], [r["loss"] for r in hist], label=LABELS[m])
        ax_err.plot(
            [r["step"] for r in evals], [100 * r["val_error"] for r in evals], "o-", label=LABELS[m]
        )
    cfg = json.loads((runs[0][2] / "config.json").read_text())
    if cfg["lr_schedule"] == "step":  # where the learning rate drops (the first run's schedule)
        for i, b in enumerate(cfg["lr_boundaries"]):
            x = round(b * cfg["steps"])
            label = f"lr x {cfg['lr_decay']:g}" if i == 0 else None
            ax_loss.axvline(x, color="gray", ls=":", lw=1, label=label)
    ax_loss.set(xlabel="step", ylabel="training loss (logged means)", yscale="log")
    ax_err.set(xlabel="step", ylabel="validation error (%)")
    for ax in (ax_loss, ax_err):
        ax.legend()
    report.save_figure(fig, path)


def profile_models(argv) -> list[dict]:
    """``profile [config flags]``: :func:`profile_step` of every model, one process.

    Measures the three models back to back at the same settings (so on the same machine state),
    prints a table and writes the rows as JSON to ``--out`` (a file) when given.
    """
    argv = list(argv)
    out = ""
    if "--out" in argv:  # here a JSON file, not a run folder
        i = argv.index("--out")
        out, argv = argv[i + 1] if i + 1 < len(argv) else "", argv[:i] + argv[i + 2 :]
    rows = []
    for model in MODELS:
        cfg = common.parse_config(ODENetConfig, SMOKE, argv + ["--model", model], "odenet")
        rows.append(dict(model=model, batch_size=cfg.batch_size, **profile_step(cfg)))
        r = rows[-1]
        print(
            f"{LABELS[model]:8s} params {r['params']:>8,}  NFE {r['nfe_fwd']:>3} / "
            f"{r['nfe_bwd']:>3}  peak {r.get('peak_mib', math.nan):6.1f} MiB  "
            f"step {r['step_seconds']:.3f} s  compile {r['compile_seconds']:.1f} s",
            flush=True,
        )
    if out:
        report.write_json(out, rows)
    return rows


def table(args: common.cli.RunsArgs) -> str:
    """``table RUN... --out DIR``: :func:`write_table`, printed."""
    text = write_table(common.cli.require_runs(args), args.out)
    print(text)
    return text
