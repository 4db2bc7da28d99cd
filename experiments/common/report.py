"""Writing results: metrics as JSON and CSV, the training curve as PNG."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import matplotlib

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


def plot_training_curve(path, history: list[dict], evals: list[dict], eval_keys=()):
    """Loss (and any ``eval_keys`` of the evaluations) against step, log scale."""
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([r["step"] for r in history], [r["loss"] for r in history], label="train loss")
    for k in eval_keys:
        ax.plot([r["step"] for r in evals], [r[k] for r in evals], "o-", label=f"eval {k}")
    ax.set(xlabel="step", yscale="log", title="training curve")
    ax.legend()
    save_figure(fig, path)


def save_figure(fig, path):
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
