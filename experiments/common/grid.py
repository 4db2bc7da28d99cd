"""Grids of runs: every point a folder, run one after another, the finished ones skipped.

A point is finished when its folder has ``metrics.json`` (written last by
:func:`experiments.common.run.main`), so rerunning a grid command resumes it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from .cli import UserError


def run_grid(points: Iterable[tuple[Path, list[str]]], main: Callable[[list[str]], Any]) -> list:
    """``main(flags + ["--out", folder])`` for every ``(folder, flags)`` point whose folder has
    no ``metrics.json`` yet; returns the folders run (as strings)."""
    done = []
    for out, flags in points:
        if (Path(out) / "metrics.json").exists():
            print(f"skip {out} (metrics.json exists)", flush=True)
            continue
        print("run", " ".join(flags), "--out", out, flush=True)
        metrics = main([*flags, "--out", str(out)])
        if isinstance(metrics, dict) and "final_eval" in metrics:
            print(f"  {out}: {metrics['final_eval']}", flush=True)
        done.append(str(out))
    return done


def subset(arg: str, known: Sequence[str], flag: str) -> list[str]:
    """The comma-separated names of ``arg`` (all of ``known`` when empty); a one-line error
    naming the known ones for any other name."""
    if not arg:
        return list(known)
    chosen = arg.split(",")
    bad = [c for c in chosen if c not in known]
    if bad:
        raise UserError(f"{flag}: unknown {', '.join(bad)}; choose from {','.join(known)}")
    return chosen


def require_folder(root, what: str) -> Path:
    """``root`` as a Path; a one-line error saying how to make it when it does not exist."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"no folder {root}: {what}")
    return root
