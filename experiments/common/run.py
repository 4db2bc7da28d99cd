"""``main()`` for every experiment: parse flags, train, write metrics and figures."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

import jax
import numpy as np

from . import cli, distributed, report
from .loop import Task, TrainResult, train


def steady_seconds_per_step(result: TrainResult) -> float:
    """Training seconds per step without the first step (which includes compilation)."""
    steps = result.history[-1]["step"] if result.history else 0
    timing = result.timing
    return (timing["train_seconds"] - timing["first_step_seconds"]) / max(1, steps - 1)


def summarise(result: TrainResult) -> dict:
    """Timing and NFE summary of a run; experiments add their own final metrics."""
    hist = result.history
    summary = dict(result.timing, steps=hist[-1]["step"] if hist else 0)
    summary["seconds_per_step"] = steady_seconds_per_step(result)
    for k in ("nfe_fwd", "nfe_bwd"):
        if hist and k in hist[0]:
            summary[f"{k}_per_step"] = float(np.mean([r[k] for r in hist]))
    return summary


def main(
    config_cls,
    smoke: dict,
    build: Callable[[object], Task],
    finish: Callable[[object, Task, TrainResult, Path], dict] | None = None,
    argv: Sequence[str] | None = None,
) -> dict:
    """Run one experiment from the command line.

    Args:
        config_cls: the experiment's config dataclass (a ``configs.base.TrainConfig``).
        smoke: the ``--smoke`` overrides.
        build: ``cfg -> Task``.
        finish: ``(cfg, task, result, out) -> dict`` of final metrics; draws the figures.
        argv: flags (default ``sys.argv[1:]``).

    Writes ``config.json``, ``history.csv``, ``evals.csv``, ``metrics.json``,
    ``training_curve.png`` and the checkpoint under ``--out``; returns the metrics.

    In a multi-process run (:mod:`.distributed`) every process trains; process 0 alone writes
    files and runs ``finish``; the others return the metrics without ``finish``'s.
    """
    t_start = time.perf_counter()
    cfg = cli.parse_config(config_cls, smoke, argv)
    distributed.initialize(cfg)  # before any JAX computation (build's included)
    writer = distributed.is_writer()
    out = Path(cfg.out)
    if writer:
        out.mkdir(parents=True, exist_ok=True)
        cli.write_config(cfg, out / "config.json")
    task = build(cfg)
    result = train(cfg, task)
    metrics = dict(summarise(result), num_processes=jax.process_count())
    if result.evals:
        metrics["final_eval"] = {k: v for k, v in result.evals[-1].items() if k != "step"}
    if not writer:
        return metrics
    report.write_csv(out / "history.csv", result.history)
    report.write_csv(out / "evals.csv", result.evals)
    name = cli.experiment_name(config_cls)
    title = f"{name}: {cfg.model}" if hasattr(cfg, "model") else name
    report.plot_training_curve(
        out / "training_curve.png",
        result.history,
        result.evals,
        task.curve_keys,
        title=title,
        loss_label=task.loss_label,
    )
    if finish is not None:
        metrics.update(finish(cfg, task, result, out))
    metrics["wall_seconds_this_process"] = time.perf_counter() - t_start
    report.write_json(out / "metrics.json", metrics)
    print(f"wrote {out}/ (metrics.json, history.csv, evals.csv, *.png, checkpoint/)")
    return metrics
