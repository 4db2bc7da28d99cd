"""The benchmark scripts' command lines, as the experiments' (``experiments/common/cli.py``).

Each script's flags are a frozen dataclass (field comments are the ``--help``), parsed by tyro
as ``python -m benchmarks.NAME``; a mistake the user can fix (an unknown case, a report path in
a missing folder) raises :class:`UserError` before any measuring starts, and ``entry(main)``
prints it as one line.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import tyro

from experiments.common.cli import UserError, entry

__all__ = ["UserError", "entry", "log", "names", "numbers", "parse", "publish", "writable"]


def parse(cls, argv: Sequence[str] | None, name: str):
    """``cls`` from the flags of ``python -m benchmarks.NAME`` (``argv``: ``sys.argv[1:]``)."""
    return tyro.cli(
        cls, args=None if argv is None else list(argv), prog=f"python -m benchmarks.{name}"
    )


def names(values: Sequence[str], known: Sequence[str], flag: str) -> list[str]:
    """The names a list flag gives, in order: ``--cases a,b`` and ``--cases a b`` are the same,
    ``all`` alone means every known one; an unknown name is a :class:`UserError`."""
    given = [n.strip() for value in values for n in value.split(",") if n.strip()]
    if given == ["all"]:
        return list(known)
    unknown = [n for n in given if n not in known]
    if unknown:
        raise UserError(f"{flag}: unknown {', '.join(unknown)}; choose from {', '.join(known)}")
    return given


def numbers(values: Sequence[str], flag: str) -> list[float]:
    """The numbers a list flag gives (``--couplings 1,0.9`` or ``--couplings 1 0.9``)."""
    given = [n.strip() for value in values for n in value.split(",") if n.strip()]
    try:
        return [float(n) for n in given]
    except ValueError as e:
        raise UserError(f"{flag}: {e}; give numbers, e.g. {flag} 1 0.999") from e


def writable(path: str, flag: str = "--out") -> str:
    """``path`` (a report to write at the end; '' = none), checked now so that a long run does
    not fail at its last step."""
    parent = Path(path).parent
    if path and not parent.is_dir():
        raise UserError(f"{flag} {path}: no folder {parent}; create it (mkdir -p {parent})")
    return path


def log(*parts) -> None:
    """A progress line on stderr (the report itself goes to stdout), flushed at once."""
    print(*parts, file=sys.stderr, flush=True)


def publish(text: str, path: str) -> str:
    """Print a finished report and write it to ``path`` too ('' = print only); returns it."""
    print(text)
    if path:
        with open(path, "w") as fh:
            fh.write(text)
    return text
