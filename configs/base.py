"""Fields every experiment shares (output, training loop, devices) and config validation.

Every experiment config subclasses :class:`TrainConfig`; each field is a command-line flag
(``--steps 500``), parsed by tyro. Validation runs when a config is built (``__post_init__``),
so a bad value fails before any training starts. A config's solver fields become one
:class:`ode_jax.SolveSettings` through :meth:`TrainConfig.solve_settings`.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Literal

import ode_jax

# Config fields passed to ode_jax.SolveSettings under their own name, where a config has them.
SOLVE_FIELDS = ("solver", "rtol", "atol", "dt0", "dtmax", "max_steps")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    out: str = "runs/default"  # folder for everything the run writes (created if missing)
    smoke: bool = False  # tiny sizes that finish in seconds (the experiment's SMOKE overrides)
    seed: int = 0  # seeds model init, data sampling and any per-step randomness
    steps: int = 1000  # optimiser steps in total (a resumed run continues up to this)
    batch_size: int = 32  # global batch, split evenly over the devices
    optimizer: Literal["adam", "sgd"] = "adam"  # sgd: SGD with heavy-ball `momentum`
    momentum: float = 0.9  # SGD momentum (0: plain SGD); unused by Adam
    lr: float = 1e-3  # learning rate (peak value when a schedule is used)
    # constant; cosine: decays to 0 at `steps`; step: multiplied by `lr_decay` at each boundary
    lr_schedule: Literal["constant", "cosine", "step"] = "constant"
    lr_boundaries: tuple[float, ...] = ()  # step schedule: fractions of `steps`, increasing
    lr_decay: float = 0.1  # step schedule: factor applied at each boundary
    grad_clip: float = 0.0  # clip the global gradient norm to this (0: no clipping)
    # L2 penalty on weight matrices and conv kernels (arrays with >= 2 dims, not biases or norm
    # scales): added to the gradient for SGD (PyTorch's weight_decay), decoupled (AdamW) for Adam
    weight_decay: float = 0.0
    log_every: int = 10  # steps between training-curve rows (mean over the interval)
    eval_every: int = 100  # steps between evaluations (and at the last step)
    checkpoint_every: int = 100  # steps between checkpoints (and at the last step)
    num_devices: int = 0  # data-parallel devices, the first n of jax.devices() (0: all)
    # Multi-process runs (JAX's multi-controller runtime; `python -m experiments.launch` sets
    # these through $JAX_COORDINATOR_ADDRESS, $JAX_NUM_PROCESSES, $JAX_PROCESS_ID instead):
    coordinator: str = ""  # host:port of process 0's coordinator ("": from the environment)
    num_processes: int = 0  # processes in the run (0: from the environment, else 1)
    process_id: int = -1  # this process's index in [0, num_processes) (-1: from the environment)
    progress: bool = True  # show a tqdm progress bar
    fresh: bool = False  # ignore a checkpoint in `out` and start over

    def __post_init__(self):
        check_types(self)
        self.check()

    def check(self):
        """Value checks; subclasses extend this (call ``super().check()``)."""
        for name in ("steps", "batch_size", "log_every", "eval_every", "checkpoint_every"):
            require(self, name, getattr(self, name) >= 1, "must be >= 1")
        require(self, "lr", self.lr > 0, "must be positive")
        require(self, "momentum", 0 <= self.momentum < 1, "must be in [0, 1)")
        require(self, "lr_decay", self.lr_decay > 0, "must be positive")
        b = self.lr_boundaries
        require(
            self,
            "lr_boundaries",
            all(0 < x < 1 for x in b) and list(b) == sorted(set(b)),
            "must be increasing fractions of `steps` in (0, 1)",
        )
        require(
            self,
            "lr_boundaries",
            bool(b) or self.lr_schedule != "step",
            "must be given for lr_schedule='step'",
        )
        require(self, "grad_clip", self.grad_clip >= 0, "must be >= 0 (0 disables clipping)")
        require(self, "weight_decay", self.weight_decay >= 0, "must be >= 0 (0: none)")
        require(self, "num_devices", self.num_devices >= 0, "must be >= 0 (0: all devices)")
        require(self, "num_processes", self.num_processes >= 0, "must be >= 0 (0: environment)")
        require(
            self,
            "process_id",
            self.process_id >= -1 and self.process_id < (self.num_processes or 2**31),
            "must be in [0, num_processes) (-1: from the environment)",
        )
        require(self, "out", bool(self.out), "must be a folder name")
        if "solver" in _field_names(self):
            for name in ("rtol", "atol", "max_steps"):
                if name in _field_names(self):
                    require(self, name, getattr(self, name) > 0, "must be positive")
            self.solve_settings()  # any other bad combination, before training starts

    def solve_settings(self, **overrides) -> ode_jax.SolveSettings:
        """The settings of the experiment's ODE solves, from its solver fields.

        Fields named as in :class:`ode_jax.SolveSettings` (``solver``, ``rtol``, ``atol``,
        ``max_steps``, ...) keep their name; ``adjoint`` (default "continuous") and the flag
        ``seminorm`` (continuous adjoint only) give the adjoint. ``overrides`` replace
        settings (e.g. ``adjoint="discrete"``).
        """
        names = _field_names(self)
        if "solver" not in names:
            raise TypeError(f"{type(self).__name__} has no solver fields")
        kwargs = {name: getattr(self, name) for name in SOLVE_FIELDS if name in names}
        adjoint = self.adjoint if "adjoint" in names else "continuous"
        if adjoint == "continuous" and "seminorm" in names and self.seminorm:
            adjoint = ode_jax.ContinuousAdjoint(seminorm=True)
        return ode_jax.SolveSettings(**kwargs, adjoint=adjoint).replace(**overrides)


def _field_names(cfg) -> set[str]:
    return {f.name for f in dataclasses.fields(cfg)}


def require(cfg, name: str, ok: bool, why: str):
    """Raise a ValueError naming the field when a value check fails."""
    if not ok:
        raise ValueError(f"{type(cfg).__name__}.{name}={getattr(cfg, name)!r} {why}")


def check_types(cfg):
    """Raise a TypeError when a field's value does not match its annotation."""
    hints = typing.get_type_hints(type(cfg))
    for field in dataclasses.fields(cfg):
        value, hint = getattr(cfg, field.name), hints[field.name]
        if not _matches(value, hint):
            raise TypeError(
                f"{type(cfg).__name__}.{field.name} must be {_describe(hint)}, got {value!r}"
            )


def _matches(value, hint) -> bool:
    origin = typing.get_origin(hint)
    if origin is Literal:
        return value in typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, h) for h in typing.get_args(hint))
    if origin is tuple:
        args = typing.get_args(hint)
        if not isinstance(value, tuple):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_matches(v, args[0]) for v in value)
        return len(args) == len(value) and all(_matches(v, a) for v, a in zip(value, args))
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)


def _describe(hint) -> str:
    if typing.get_origin(hint) is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(hint))
    return getattr(hint, "__name__", str(hint))
