"""Latent ODE vs RNN baselines on irregularly sampled noisy spirals (paper Section 5.1, Table 2).

The data follow the paper (a data set of 2-D spirals, half clockwise and half counter-clockwise,
each starting from a different point, with Gaussian noise, 100 equally spaced times of which n
are observed) and, where it is silent, torchdiffeq's examples/latent_ode.py (spiral centres at
(+-5, 0), one centre per direction; b = 0.3). Every spiral obeys the same dynamics,
dr/dt = spiral_b, dphi/dt = +-1 (polar coordinates around its direction's centre), from its own
random start point (r0, phi0): so unlike torchdiffeq's windows cut from two fixed long
trajectories, validation and test spirals are new curves, not stretches of training ones.

One run trains one model (`model`); every other choice is a field below and was chosen on the
validation split (results/latent_ode/PROVENANCE.md). The test split is read only by the
`table` command.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from .base import TrainConfig, require


@dataclasses.dataclass(frozen=True)
class LatentODEConfig(TrainConfig):
    """Data, one model (latent ODE, RNN on the grid, RNN with time gaps), solver, training."""

    out: str = "runs/latent_ode/latent_ode_n30_s0"  # folder for everything the run writes
    model: Literal["latent_ode", "rnn", "rnn_gap"] = "latent_ode"
    # Data: the same spirals for every model, n and seed; the splits come from different seeds.
    num_train: int = 1000  # training spirals (paper and torchdiffeq: 1000)
    num_val: int = 200  # validation spirals: every choice, checkpoints included, is made on them
    num_test: int = 200  # test spirals, scored once by the `table` command
    data_seed: int = 0  # train, validation, test spirals from data_seed + 0, 1, 2
    n_grid: int = 100  # equally spaced times in the observable window (paper: 100)
    n_extrap: int = 100  # grid times after the window: the extrapolation targets
    dt: float = 0.04  # grid spacing in time; the angle advances 1 rad per time unit
    spiral_b: float = 0.3  # the radius grows by spiral_b per radian (torchdiffeq: b = 0.3)
    r0_min: float = 1.0  # each spiral's starting radius is uniform in [r0_min, r0_max] and its
    r0_max: float = 3.0  #   starting angle uniform in [0, 2 pi)
    spiral_offset: float = 5.0  # centres: counter-clockwise (+offset, 0), clockwise (-offset, 0)
    noise_std: float = 0.1  # std of the Gaussian observation noise
    n_obs: int = 30  # observations per sequence, drawn without replacement (paper: 30/50/100)
    # Latent ODE (paper: latent 4, RNN encoder 25 units, dynamics and decoder 1x20 hidden).
    latent_size: int = 4
    rnn_hidden: int = 25  # recognition RNN of the latent ODE, and the hidden units of the RNNs
    field_width: int = 20  # hidden units per layer of the latent dynamics MLP (paper: 20)
    field_depth: int = 1  # hidden layers of the dynamics MLP (paper: 1; torchdiffeq: 2)
    decoder_width: int = 20  # hidden units per layer of the decoder MLP (paper: 20)
    decoder_depth: int = 1  # hidden layers of the decoder MLP (paper: 1)
    encoder: Literal["rnn", "odernn"] = "rnn"  # rnn: paper; odernn: Rubanova et al. 2019
    cell: Literal["gru", "tanh"] = "gru"  # RNN cell of the encoder and the baselines
    obs_std: float = 0.1  # fixed std of the latent ODE's Gaussian likelihood p(x | z)
    kl_weight: float = 1.0  # weight of KL(q(z0) || N(0, I)) in the loss (1: the ELBO)
    # RNN baselines: trained on squared error of next-value predictions inside the window.
    rollout_from: float = 0.5  # fraction of the window read as observed; from there on the
    #   RNN reads its own predictions (a free-running rollout, as when it extrapolates);
    #   1.0: teacher forcing only
    input_scale: float = 5.0  # the RNNs read positions / input_scale (centres are at +-5)
    gap_commit: int = 0  # rnn_gap extrapolation: feed back every gap_commit-th prediction
    #   (the others are read off with their gap; see RNNBaseline.extrapolate); 0: the mean
    #   gap between observations in grid steps, round(n_grid / n_obs); 1: every grid step
    # Latent solves (training and evaluation).
    solver: Literal["bosh3", "dopri5", "tsit5"] = "dopri5"
    rtol: float = 1e-3
    atol: float = 1e-4
    adjoint: Literal["continuous", "discrete"] = "discrete"  # discrete: ~15x fewer backward NFE
    steps: int = 3000  # optimiser steps in total (a resumed run continues up to this)
    batch_size: int = 100  # spirals per step
    lr: float = 1e-2  # learning rate (torchdiffeq: 0.01 with Adam), peak of the schedule
    # constant; cosine: decays to 0 at `steps`; step: x `lr_decay` at each of `lr_boundaries`
    lr_schedule: Literal["constant", "cosine", "step"] = "cosine"
    log_every: int = 50  # steps between training-curve rows (mean over the interval)
    eval_every: int = 250  # validation every eval_every steps; the best one is kept (best/)
    checkpoint_every: int = 500  # steps between checkpoints (a run resumes from the last)
    num_plot: int = 4  # test spirals drawn side by side in Figure 6

    def check(self):
        super().check()
        require(self, "num_train", self.num_train >= 2, "must be >= 2")
        require(self, "num_val", self.num_val >= 1, "must be >= 1")
        require(self, "num_test", self.num_test >= self.num_plot, "must be >= num_plot")
        require(self, "n_grid", self.n_grid >= 2, "must be >= 2")
        require(self, "n_extrap", self.n_extrap >= 2, "must be >= 2")
        require(self, "n_obs", 2 <= self.n_obs <= self.n_grid, "must be in [2, n_grid]")
        require(self, "dt", self.dt > 0, "must be positive")
        require(self, "r0_min", 0 < self.r0_min <= self.r0_max, "must be in (0, r0_max]")
        require(self, "noise_std", self.noise_std >= 0, "must be >= 0")
        require(self, "obs_std", self.obs_std > 0, "must be positive")
        require(self, "kl_weight", self.kl_weight >= 0, "must be >= 0")
        require(self, "rollout_from", 0 < self.rollout_from <= 1, "must be in (0, 1]")
        require(self, "input_scale", self.input_scale > 0, "must be positive")
        require(self, "gap_commit", self.gap_commit >= 0, "must be >= 0 (0: automatic)")
        require(self, "num_plot", self.num_plot >= 2, "must be >= 2 (both directions)")

    def gap_commit_steps(self) -> int:
        """rnn_gap's extrapolation stride in grid steps (see ``gap_commit``)."""
        return self.gap_commit or max(1, round(self.n_grid / self.n_obs))


# Paper Table 2 (Chen et al. 2018): predictive RMSE at n = 30 / 50 / 100.
PAPER_RMSE = {
    "rnn": {30: 0.3937, 50: 0.3202, 100: 0.1813},
    "latent_ode": {30: 0.1642, 50: 0.1502, 100: 0.1346},
}

# --smoke: a run that finishes in seconds (the tests use it).
SMOKE = dict(
    num_train=16,
    num_val=4,
    num_test=4,
    n_grid=20,
    n_extrap=10,
    dt=0.2,
    n_obs=8,
    rnn_hidden=6,
    field_width=6,
    decoder_width=6,
    steps=4,
    batch_size=4,
    log_every=2,
    eval_every=2,
    checkpoint_every=2,
    num_plot=2,
)
