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
