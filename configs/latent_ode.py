"""Latent ODE vs RNN baselines on irregularly sampled noisy spirals (paper Section 5, Table 2).

The paper leaves the spiral formula and noise level unstated; the choices are the fields below
(see ode_jax/data/_spirals.py): Archimedean spirals r = a + b*theta at unit angular speed,
half counter-clockwise and half mirrored (clockwise), theta0 uniform, Gaussian noise.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

from .base import TrainConfig, require


@dataclasses.dataclass(frozen=True)
class LatentODEConfig(TrainConfig):
    """Data, the three models (latent ODE, RNN, RNN with time gaps), solver, training."""

    out: str = "runs/latent_ode/n30"  # folder for everything the run writes
    # Data: the same spirals for every model and every n (only the observed subset changes).
    num_train: int = 1000  # training spirals (paper: 1000)
    num_test: int = 200  # held-out spirals for the extrapolation RMSE
    data_seed: int = 0  # train spirals use data_seed, test spirals data_seed + 1
    n_grid: int = 100  # equally spaced times in the observable window (paper: 100)
    n_extrap: int = 100  # grid times after the window, the extrapolation targets (paper: 100)
    dt: float = 0.04  # grid spacing; theta advances 1 rad per time unit
    spiral_a: float = 0.0  # r = a + b * theta
    spiral_b: float = 0.3
    theta0_min: float = math.pi  # starting angle, uniform in [theta0_min, theta0_max]
    theta0_max: float = 3 * math.pi
    noise_std: float = 0.1  # std of the Gaussian observation noise
    n_obs: int = 30  # observations per sequence, drawn without replacement (paper: 30/50/100)
    # Latent ODE (paper: latent 4, RNN encoder 25 units, dynamics and decoder 1x20 hidden).
    latent_size: int = 4
    rnn_hidden: int = 25  # recognition RNN and both baselines
    field_width: int = 20  # hidden units of the latent dynamics MLP (one hidden layer)
    decoder_width: int = 20  # hidden units of the decoder MLP (one hidden layer)
    encoder: Literal["rnn", "odernn"] = "rnn"  # rnn: paper; odernn: Rubanova et al. 2019
    cell: Literal["gru", "tanh"] = "gru"  # RNN cell of the encoder and both baselines
    obs_std: float = 0.1  # fixed std of the latent ODE's Gaussian likelihood p(x | z)
    kl_weight: float = 1.0  # weight of KL(q(z0) || N(0, I)) in the loss (1: the ELBO)
    baselines: bool = True  # also train the two RNN baselines (same data, same batches)
    # Latent solves (training and evaluation).
    solver: Literal["bosh3", "dopri5", "tsit5"] = "dopri5"
    rtol: float = 1e-3
    atol: float = 1e-4
    adjoint: Literal["continuous", "discrete"] = "continuous"
    # Training: one optimiser over all models (the losses are summed, the parameters are
    # disjoint, so with Adam and no clipping each model trains as if alone).
    steps: int = 2500
    batch_size: int = 100  # spirals per step
    lr: float = 5e-3  # Adam, peak of the cosine schedule
    lr_schedule: Literal["constant", "cosine"] = "cosine"  # cosine decays to 0 at `steps`
    log_every: int = 25
    eval_every: int = 500
    checkpoint_every: int = 250
    num_plot: int = 4  # test spirals drawn in the figures

    def check(self):
        super().check()
        require(self, "num_train", self.num_train >= 2, "must be >= 2")
        require(self, "num_test", self.num_test >= 1, "must be >= 1")
        require(self, "n_grid", self.n_grid >= 2, "must be >= 2")
        require(self, "n_extrap", self.n_extrap >= 2, "must be >= 2")
        require(self, "n_obs", 2 <= self.n_obs <= self.n_grid, "must be in [2, n_grid]")
        require(self, "dt", self.dt > 0, "must be positive")
        require(self, "noise_std", self.noise_std >= 0, "must be >= 0")
        require(self, "obs_std", self.obs_std > 0, "must be positive")
        require(self, "theta0_max", self.theta0_max >= self.theta0_min, "must be >= theta0_min")
        require(self, "kl_weight", self.kl_weight >= 0, "must be >= 0")
        require(self, "grad_clip", self.grad_clip == 0, "must be 0 (it would couple the models)")
        require(self, "num_plot", 1 <= self.num_plot <= self.num_test, "must be in [1, test]")


# --smoke: a run that finishes in seconds (the tests use it).
SMOKE = dict(
    num_train=16,
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
