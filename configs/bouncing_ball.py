"""Bouncing ball: learn gravity and the coefficient of restitution through event times."""

from __future__ import annotations

import dataclasses
from typing import Literal

from .base import TrainConfig, require


@dataclasses.dataclass(frozen=True)
class BouncingBallConfig(TrainConfig):
    """The true ball and its observations; the model (g, e, optional drag MLP); solver; training.

    Units: metres, seconds. The ball starts at height ``h0`` with velocity ``v0`` (both known)
    and bounces off the floor h = 0, where v -> -e v.
    """

    out: str = "runs/bouncing_ball"  # folder for everything the run writes
    g_true: float = 9.81  # gravity of the true system (m/s^2)
    e_true: float = 0.8  # coefficient of restitution of the true system (v -> -e v at the floor)
    h0: float = 10.0  # initial height (m), known to the model
    v0: float = 0.0  # initial vertical velocity (m/s, up is positive), known to the model
    # none: free fall between bounces; mlp: the true system has quadratic air drag
    # (dv/dt = -g - drag_coef v|v|) and the model learns an MLP correction to the acceleration
    drag: Literal["none", "mlp"] = "none"
    drag_coef: float = 0.02  # c of the true quadratic drag (1/m), used when drag="mlp"
    t_end: float = 7.5  # observations lie in [0, t_end] (s): four bounces of the true ball
    n_obs: int = 60  # observed heights, at sorted uniform random times in (0, t_end]
    noise: float = 0.05  # std of the Gaussian noise on the observed heights (m)
    data_seed: int = 0  # seed of the observation times and noise (fixed across model seeds)
    # floor impacts modelled, each one a solve that stops at the event; after the last one the
    # ball is taken to rest on the floor (must exceed the true impacts in [0, t_end])
    bounces: int = 6
    g_init: float = 5.0  # initial guess of g (m/s^2), away from the truth
    e_init: float = 0.5  # initial guess of e, away from the truth
    mlp_width: int = 16  # hidden units of the drag MLP (a function of v)
    mlp_depth: int = 1  # hidden layers of the drag MLP
    solver: Literal["bosh3", "dopri5", "tsit5", "dopri8"] = "tsit5"  # adaptive RK method
    rtol: float = 1e-6  # relative tolerance of every solve
    atol: float = 1e-6  # absolute tolerance (m, m/s)
    max_steps: int = 256  # bound on the steps of one segment's solve (floor to floor)
    adjoint: Literal["continuous", "discrete"] = "continuous"  # how gradients are computed
    steps: int = 3000  # optimiser steps (the drag MLP needs most of them; g, e alone ~300)
    batch_size: int = 60  # observations per step, drawn without replacement (n_obs: all)
    lr: float = 0.05  # learning rate (of --optimizer; peak value under a schedule)
    lr_schedule: Literal["constant", "cosine", "step"] = "cosine"  # cosine decays to 0
    log_every: int = 10  # steps between training-curve rows (g and e are logged there too)
    eval_every: int = 250  # steps between evaluations on every observation
    checkpoint_every: int = 1000  # steps between checkpoints

    def check(self):
        super().check()
        for name in ("g_true", "h0", "t_end", "g_init"):
            require(self, name, getattr(self, name) > 0, "must be positive")
        for name in ("e_true", "e_init"):
            require(self, name, 0 < getattr(self, name) < 1, "must be in (0, 1)")
        require(self, "drag_coef", self.drag_coef >= 0, "must be >= 0")
        require(self, "noise", self.noise >= 0, "must be >= 0")
        require(self, "n_obs", self.n_obs >= 2, "must be >= 2")
        require(self, "batch_size", self.batch_size <= self.n_obs, "must be <= n_obs")
        require(self, "bounces", self.bounces >= 1, "must be >= 1")
        require(self, "mlp_width", self.mlp_width >= 1, "must be >= 1")
        require(self, "mlp_depth", self.mlp_depth >= 1, "must be >= 1")


# --smoke: a run that finishes in seconds (the tests use it) and still gets g and e roughly.
SMOKE = dict(
    t_end=4.0,
    n_obs=24,
    batch_size=24,
    bounces=3,
    steps=150,
    lr=0.1,
    log_every=5,
    eval_every=75,
    checkpoint_every=75,
)
