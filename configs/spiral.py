"""Spiral demo (torchdiffeq's ode_demo): learn dy/dt = (y**3) A from short trajectory windows."""

from __future__ import annotations

import dataclasses
from typing import Literal

import ode_jax

from .base import TrainConfig, require
from .regularise import RegularisationFields


@dataclasses.dataclass(frozen=True)
class SpiralConfig(RegularisationFields, TrainConfig):
    """Data: the true system sampled on [0, t_end]; model: an MLP field; solver; training."""

    out: str = "runs/spiral"  # folder for everything the run writes
    data_size: int = 1000  # points on the true trajectory
    t_end: float = 25.0  # final time of the true trajectory
    batch_time: int = 10  # points per training window (window length (batch_time-1)*dt)
    features: Literal["cube", "identity"] = "cube"  # feed y**3 (as the demo) or y to the MLP
    width: int = 50  # hidden units
    depth: int = 1  # hidden layers
    solver: Literal["bosh3", "dopri5", "tsit5", "dopri8"] = "dopri5"  # adaptive RK method
    rtol: float = 1e-5  # relative tolerance of every solve (training and evaluation)
    atol: float = 1e-6  # absolute tolerance
    # how gradients are computed; "reversible" (exact, O(1) memory) needs `reversible`
    adjoint: Literal["continuous", "discrete", "reversible"] = "continuous"
    reversible: bool = False  # solve with ode_jax.reversible(solver) (coupling 0.999)
    steps: int = 10000  # optimiser steps
    batch_size: int = 64  # windows per step
    lr: float = 3e-3  # learning rate (of --optimizer; peak value under a schedule)
    # constant; cosine: decays to 0 at `steps`; step: x `lr_decay` at each of `lr_boundaries`
    lr_schedule: Literal["constant", "cosine", "step"] = "cosine"
    log_every: int = 20  # steps between training-curve rows
    eval_every: int = 200  # steps between whole-horizon evaluations
    checkpoint_every: int = 200  # steps between checkpoints

    def check(self):
        super().check()
        require(self, "data_size", self.data_size >= 2, "must be >= 2")
        require(self, "t_end", self.t_end > 0, "must be positive")
        require(self, "batch_time", 2 <= self.batch_time <= self.data_size, "must be in [2, N]")
        require(self, "width", self.width >= 1, "must be >= 1")
        require(self, "depth", self.depth >= 0, "must be >= 0")
        ok = self.reversible or self.adjoint != "reversible"
        require(self, "adjoint", ok, "needs a reversible solver: add --reversible")
        ok = self.reg != "error" or self.adjoint == "discrete"
        require(self, "reg", ok, "(the error estimate) needs --adjoint discrete")

    def solve_settings(self, **overrides) -> ode_jax.SolveSettings:
        if self.reversible:
            overrides.setdefault("solver", ode_jax.reversible(self.solver))
        return super().solve_settings(**overrides)


# --smoke: a run that finishes in seconds (the tests use it).
SMOKE = dict(
    data_size=200,
    steps=6,
    batch_size=4,
    batch_time=5,
    width=8,
    log_every=2,
    eval_every=3,
    checkpoint_every=3,
)
