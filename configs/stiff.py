"""Stiff neural ODE: learn Robertson's chemical kinetics from log-spaced observations."""

from __future__ import annotations

import dataclasses
from typing import Literal

import ode_jax

from .base import TrainConfig, require


@dataclasses.dataclass(frozen=True)
class StiffConfig(TrainConfig):
    """Data: Robertson's reactions A -> B (k1), 2B -> B + C (k2), B + C -> A + C (k3) from
    y0 = (1, 0, 0); model: the three reactions with learnable rates; implicit solver;
    training; the side-by-side explicit-solver comparison.

    Units: concentrations are dimensionless (mole fractions), times in seconds.
    """

    out: str = "runs/stiff"  # folder for everything the run writes
    k_true: tuple[float, float, float] = (0.04, 3e7, 1e4)  # k1 (1/s), k2, k3 (1/s per unit)
    t_first: float = 1e-5  # first observation time (s); the solve starts at t = 0
    t_last: float = 1e5  # last observation time (s)
    n_obs: int = 40  # observations, log-spaced in [t_first, t_last]; validation at the midpoints
    # std of Gaussian noise on the observations, relative to each species' max over the data
    noise: float = 0.0
    data_seed: int = 0  # seed of the observation noise (fixed across model seeds)
    # the initial guess of the rates, as multiples of the true ones (the model learns log k)
    k_init_factors: tuple[float, float, float] = (3.0, 1 / 3, 3.0)
    # implicit method of training and evaluation (kvaerno3/5: ESDIRK; rodas5: Rosenbrock)
    solver: Literal["kvaerno3", "kvaerno5", "rodas5"] = "rodas5"
    rtol: float = 1e-6  # relative tolerance of every training/evaluation solve
    atol: float = 1e-10  # absolute tolerance (y2 peaks at 3.6e-5, so 1e-10 is ~3e-6 of it)
    max_steps: int = 4096  # bound on one solve's attempted steps (the explicit solver's too)
    # discrete: the exact gradient of the computed solve; continuous: the adjoint ODE solved
    # backwards with the same implicit solver, to the same tolerances
    adjoint: Literal["discrete", "continuous"] = "discrete"
    # continuous adjoint: read y from the forward dense output instead of solving for it
    # backwards (Robertson's y, solved backwards, blows up: --no-interpolate shows it)
    interpolate: bool = True
    # side by side after training: one training step's solves with `explicit_solver` and each
    # implicit one at the same max_steps (throw=False), and a forward explicit solve with
    # `explicit_max_steps_long` steps to see how far it gets (compare.json, compare.csv)
    compare: bool = True
    explicit_solver: Literal["tsit5", "dopri5", "bosh3"] = "tsit5"  # the explicit method
    explicit_max_steps_long: int = 200_000  # the long explicit forward solve's step budget
    steps: int = 1000  # optimiser steps (the loss reaches the solver error floor by ~700)
    batch_size: int = 40  # must equal n_obs: every step fits the whole trajectory
    lr: float = 0.1  # learning rate on log k (of --optimizer; peak under a schedule)
    lr_schedule: Literal["constant", "cosine", "step"] = "cosine"  # cosine decays to 0
    grad_clip: float = 1.0  # clip the global gradient norm (early steps can be steep)
    log_every: int = 5  # steps between training-curve rows (solver counts and rates too)
    eval_every: int = 50  # steps between evaluations (train and validation MSE)
    checkpoint_every: int = 200  # steps between checkpoints

    def check(self):
        super().check()
        require(self, "k_true", all(k > 0 for k in self.k_true), "must be positive")
        require(self, "k_init_factors", all(f > 0 for f in self.k_init_factors), "must be > 0")
        require(self, "t_first", 0 < self.t_first < self.t_last, "must be in (0, t_last)")
        require(self, "n_obs", self.n_obs >= 2, "must be >= 2")
        require(self, "batch_size", self.batch_size == self.n_obs, "must equal n_obs")
        require(self, "noise", self.noise >= 0, "must be >= 0")
        require(self, "explicit_max_steps_long", self.explicit_max_steps_long >= 1, "must be >= 1")

    def solve_settings(self, **overrides) -> ode_jax.SolveSettings:
        if self.adjoint == "continuous" and self.interpolate:
            overrides = {"adjoint": ode_jax.ContinuousAdjoint(interpolate=True), **overrides}
        return super().solve_settings(**overrides)


# --smoke: a run that finishes in seconds (the tests use it) and still moves the rates.
SMOKE = dict(
    n_obs=16,
    batch_size=16,
    steps=80,
    log_every=5,
    eval_every=40,
    checkpoint_every=40,
    explicit_max_steps_long=20_000,
)
