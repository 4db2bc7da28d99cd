"""Writing results: metrics as JSON and CSV, markdown tables, the training curve as PNG."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")  # files only; no display needed
import matplotlib.pyplot as plt  # noqa: E402


def write_json(path, data):
    Path(path).write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def write_csv(path, rows: list[dict]):
    """Rows of dicts as CSV; the columns are the union of the keys, in first-seen order."""
    columns = list(dict.fromkeys(k for row in rows for k in row))
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def read_csv(path) -> list[dict]:
    """Rows written by :func:`write_csv` back as dicts of floats (empty cells left out)."""
    with open(path, newline="") as f:
        return [{k: float(v) for k, v in row.items() if v != ""} for row in csv.DictReader(f)]


# How a logged or evaluated quantity is drawn: (axis label with units, factor on the values).
METRIC_LABELS = {
    "loss": ("training loss (objective per batch)", 1.0),
    "val_error": ("validation error (%)", 100.0),
    "test_error": ("test error (%)", 100.0),
    "val_loss": ("validation cross-entropy (nats)", 1.0),
    "mae": ("MAE of the trajectory from y(0) (state units)", 1.0),
    "val_mse": ("validation MSE (state units²)", 1.0),
    "test_nll": ("test NLL (nats)", 1.0),
    "test_loss": ("test E_q[log q + U] (nats)", 1.0),
    "kl": ("KL(q || p) (nats)", 1.0),
}


def metric_label(key: str) -> tuple[str, float]:
    """``(axis label, factor)`` for ``key``: :data:`METRIC_LABELS`, else the key in words."""
    return METRIC_LABELS.get(key, (key.replace("_", " "), 1.0))


def fitting_scale(values) -> str:
    """Log scale for positive values spanning more than 30x, else linear (losses can be < 0)."""
    v = np.asarray([x for x in values if np.isfinite(x)], dtype=float)
    return "log" if v.size and v.min() > 0 and v.max() > 30 * v.min() else "linear"


def plot_training_curve(
    path, history: list[dict], evals: list[dict], eval_keys=(), title=None, loss_label=None
):
    """Training loss against step (first panel) and each of the evaluations' ``eval_keys``
    (one panel each), every panel with its own labelled axis, log scale where the values
    span decades. ``title`` names the experiment and model (default: the run folder's name);
    ``loss_label`` says what the loss is, with units (default: "training loss")."""
    keys = [k for k in eval_keys if evals and k in evals[0]]
    fig, axes = plt.subplots(1, 1 + len(keys), figsize=(1.0 + 4.4 * (1 + len(keys)), 3.8))
    axes = np.atleast_1d(axes)
    loss = [r["loss"] for r in history]
    axes[0].plot([r["step"] for r in history], loss, "C0-", lw=1.2)
    axes[0].set(ylabel=loss_label or "training loss", yscale=fitting_scale(loss))
    axes[0].set_title("training loss (per logged step)", fontsize=11)
    for i, (ax, k) in enumerate(zip(axes[1:], keys)):
        name, factor = metric_label(k)
        ys = [factor * r[k] for r in evals]
        ax.plot([r["step"] for r in evals], ys, f"C{i + 1}o-", ms=3, lw=1.2)
        ax.set(ylabel=name, yscale=fitting_scale(ys))
        ax.set_title(f"evaluation: {name.split(' (')[0]}", fontsize=11)
    for ax in axes:
        ax.set_xlabel("optimiser step")
        ax.grid(alpha=0.3)
    fig.suptitle(title or Path(path).parent.name, fontsize=12)
    save_figure(fig, path)


def redraw_training_curve(
    run, title=None, eval_keys=None, loss_label=None, name="training_curve.png"
) -> Path:
    """Redraw ``run/training_curve.png`` from the run's ``history.csv`` and ``evals.csv``
    (the arguments as in :func:`plot_training_curve`).

    ``eval_keys``: default, the first evaluation column with an entry in :data:`METRIC_LABELS`."""
    run = Path(run)
    history = read_csv(run / "history.csv")
    evals = read_csv(run / "evals.csv") if (run / "evals.csv").is_file() else []
    if eval_keys is None:
        eval_keys = [k for k in (evals[0] if evals else {}) if k in METRIC_LABELS][:1]
    plot_training_curve(run / name, history, evals, eval_keys, title, loss_label)
    return run / name


def save_figure(fig, path):
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def number(spec: str) -> Callable:
    """A table cell formatter: ``spec.format(v)``, or "–" for a missing (non-finite) float."""
    return lambda v: "–" if isinstance(v, float) and not np.isfinite(v) else spec.format(v)


def markdown_table(rows: list[dict], columns) -> str:
    """columns: (key, header, formatter) triples; numbers right-aligned after the first."""
    lines = ["| " + " | ".join(h for _, h, _ in columns) + " |"]
    lines.append("|" + "|".join("---" if i == 0 else "---:" for i in range(len(columns))) + "|")
    for row in rows:
        lines.append("| " + " | ".join(fmt(row[key]) for key, _, fmt in columns) + " |")
    return "\n".join(lines)
