"""The command line of every experiment: config flags (tyro), subcommands, one-line errors.

Every experiment runs as ``python -m experiments.NAME [flags]`` (train, flags from its config
dataclass) or ``python -m experiments.NAME SUBCOMMAND [args]`` (tables, profiles, ...), both
parsed by tyro, so ``--help`` works everywhere. A mistake the user can fix raises
:class:`UserError`; :func:`entry` prints it as one ``error: ...`` line (no traceback) and turns
Ctrl-C into a line that says how to resume.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import tyro


class UserError(Exception):
    """A mistake the user can fix (a missing folder, a flag that does not fit): its message
    says what is wrong and what to do, and :func:`entry` prints it without a traceback."""


class Interrupted(UserError):
    """Training stopped by Ctrl-C; the message says how to resume."""


def prog(name: str, subcommand: str = "") -> str:
    """How the user runs it: ``python -m experiments.NAME [SUBCOMMAND]``."""
    return f"python -m experiments.{name}" + (f" {subcommand}" if subcommand else "")


def experiment_name(config_cls) -> str:
    """The experiment a config class belongs to: ``configs.NAME`` -> ``NAME``."""
    return config_cls.__module__.rpartition(".")[2]


def parse_config(cls, smoke: dict, argv: Sequence[str] | None = None, name: str = ""):
    """Build ``cls`` from command-line flags.

    The defaults are ``cls()``; with ``--smoke`` they are ``cls(smoke=True, **smoke)``, and
    any other flag overrides either. Unknown flags and wrong types exit with tyro's message,
    bad values with one line naming the field, before anything runs.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    default = cls(smoke=True, **smoke) if "--smoke" in argv else cls()
    name = name or experiment_name(cls)
    try:
        return tyro.cli(cls, default=default, args=argv, prog=prog(name))
    except (ValueError, TypeError) as e:  # raised by the config's own checks
        raise SystemExit(f"error: bad config: {e}") from e


@dataclasses.dataclass(frozen=True)
class Subcommand:
    """``python -m experiments.NAME <name> [args]``: ``run(tyro.cli(args))``.

    Attributes:
        args: a dataclass of the subcommand's arguments (its field comments are the help), or
            None: ``run`` gets the raw argument list (and parses it with :func:`parse_config`).
        run: ``args -> result``; prints what the user needs to see.
        help: one line for the experiment's usage text.
        default: the ``args`` instance holding the defaults (else ``args()``).
    """

    args: type
    run: Callable[[Any], Any]
    help: str
    default: Any = None


@dataclasses.dataclass(frozen=True)
class RunsArgs:
    """Arguments of a subcommand that collects finished runs into a results folder."""

    runs: tyro.conf.Positional[tuple[str, ...]] = ()  # run folders (at least one)
    out: str = "results"  # folder for the tables and figures


def require_runs(args: RunsArgs) -> tuple[str, ...]:
    """The run folders of ``args`` (files among them, e.g. logs from a shell glob, are
    skipped); a clear error when none is given or a path does not exist."""
    if not args.runs:
        raise UserError("give at least one run folder (e.g. runs/NAME/*)")
    missing = [r for r in args.runs if not Path(r).exists()]
    if missing:
        raise UserError(f"no run folder {', '.join(missing)}")
    return tuple(r for r in args.runs if Path(r).is_dir())


def dispatch(
    name: str,
    argv: Sequence[str] | None,
    train: Callable[[list[str]], Any] | None,
    subcommands: dict[str, Subcommand] | None = None,
):
    """Run ``python -m experiments.NAME``: a subcommand when the first argument names one,
    else ``train(argv)`` (config flags). With ``train=None`` a subcommand is required."""
    argv = list(sys.argv[1:] if argv is None else argv)
    subcommands = subcommands or {}
    if argv[:1] and argv[0] in subcommands:
        sub = subcommands[argv[0]]
        if sub.args is None:
            return sub.run(argv[1:])
        default = sub.default if sub.default is not None else sub.args()
        args = tyro.cli(sub.args, default=default, args=argv[1:], prog=prog(name, argv[0]))
        return sub.run(args)
    if train is None or (argv[:1] and not argv[0].startswith("-")):
        usage = "\n".join(
            [f"usage: {prog(name)} [--help] [flags]" if train else f"usage: {prog(name)} ..."]
            + [f"       {prog(name, k)} [--help] ...  # {s.help}" for k, s in subcommands.items()]
        )
        if argv[:1] in (["-h"], ["--help"]) or not argv:
            print(usage)
            return None
        raise SystemExit(f"error: unknown subcommand {argv[0]!r}\n{usage}")
    if subcommands and ("-h" in argv or "--help" in argv):
        print("subcommands:")
        for k, sub in subcommands.items():
            print(f"  {prog(name, k)} [--help] ...  # {sub.help}")
    return train(argv)


def entry(main: Callable[[], Any]):
    """``if __name__ == "__main__": entry(main)``: user errors and Ctrl-C as one line."""
    try:
        main()
    except UserError as e:
        print(f"error: {e}" if not isinstance(e, Interrupted) else str(e), file=sys.stderr)
        sys.exit(130 if isinstance(e, Interrupted) else 2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)


def config_to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def config_from_dict(cls, data: dict):
    """Inverse of :func:`config_to_dict`; unknown keys and bad values raise."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} keys {unknown}; known: {sorted(names)}")
    hints = {f.name: f.type for f in dataclasses.fields(cls)}
    # JSON has no tuples: give tuple-typed fields their type back.
    fixed = {
        k: tuple(v) if isinstance(v, list) and "tuple" in str(hints[k]) else v
        for k, v in data.items()
    }
    return cls(**fixed)


def write_config(cfg, path):
    with open(path, "w") as f:
        json.dump(config_to_dict(cfg), f, indent=2, sort_keys=True)
