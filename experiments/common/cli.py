"""Config parsing: dataclass defaults from ``configs/``, ``--smoke`` sizes, tyro overrides."""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Sequence

import tyro


def parse_config(cls, smoke: dict, argv: Sequence[str] | None = None):
    """Build ``cls`` from command-line flags.

    The defaults are ``cls()``; with ``--smoke`` they are ``cls(smoke=True, **smoke)``, and
    any other flag overrides either. Unknown flags, wrong types and bad values exit with a
    message before anything runs.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    default = cls(smoke=True, **smoke) if "--smoke" in argv else cls()
    try:
        return tyro.cli(cls, default=default, args=argv)
    except (ValueError, TypeError) as e:  # raised by the config's own checks
        raise SystemExit(f"error: bad config: {e}") from e


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


def pop_option(args: list[str], flag: str, default=None):
    """Remove ``flag VALUE`` from ``args`` (in place) and return VALUE, or ``default``."""
    if flag not in args:
        return default
    i = args.index(flag)
    if i + 1 >= len(args):
        raise SystemExit(f"error: {flag} needs a value")
    value = args[i + 1]
    del args[i : i + 2]
    return value


def runs_and_out(args: Sequence[str], default_out: str) -> tuple[list[str], str]:
    """``RUN... [--out DIR]`` (a ``table`` subcommand's arguments) -> (run folders, out)."""
    args = list(args)
    out = pop_option(args, "--out", default_out)
    if not args:
        raise SystemExit("error: give at least one run folder")
    return args, out
