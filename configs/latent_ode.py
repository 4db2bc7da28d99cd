"""Latent ODE vs RNN baselines on irregularly sampled noisy spirals (paper Section 5, Table 2).

The paper leaves the spiral formula and noise level unstated; the choices are the fields below
(see ode_jax/data/_spirals.py). Two long trajectories of n_total grid points: an Archimedean
spiral r = a + b*theta traversed outwards at unit angular speed from theta_min, counter-clockwise
and centred at (+spiral_offset, 0), and its mirror image, clockwise, centred at
(-spiral_offset, 0). Every sequence is a stretch of one of them (half each direction) starting
at a random grid index, with i.i.d. Gaussian noise, as in torchdiffeq's examples/latent_ode.py.
Training windows start anywhere on the trajectories, so they cover them; test sequences start
early enough that their extrapolation targets lie on them too, i.e. in the part the training
windows show (`test_covered`).
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
    n_total: int = 400  # grid points of each long trajectory; training windows start in
    #   [0, n_total - n_grid], so they cover all of it
    test_covered: bool = True  # test sequences start in [0, n_total - n_grid - n_extrap], so
    #   their targets lie on the covered trajectory (False: drawn like training sequences)
    dt: float = 0.04  # grid spacing; theta advances 1 rad per time unit
    spiral_a: float = 0.0  # r = a + b * theta
    spiral_b: float = 0.3
    theta_min: float = math.pi  # angle at the trajectory's first grid point (r = 0.94 there)
    spiral_offset: float = 5.0  # centres: counter-clockwise (+offset, 0), clockwise (-offset, 0),
    #   as in torchdiffeq's generator (0 overlaps the two directions: at n=30, 5000 steps, the
    #   latent ODE then extrapolated with RMSE 2.8 instead of 0.36; see PROVENANCE.md)
    noise_std: float = 0.1  # std of the Gaussian observation noise
    n_obs: int = 30  # observations per sequence, drawn without replacement (paper: 30/50/100)
    # Latent ODE (paper: latent 4, RNN encoder 25 units, dynamics and decoder 1x20 hidden).
    latent_size: int = 4
    rnn_hidden: int = 25  # recognition RNN and both baselines
    # The dynamics and decoder MLPs are larger than the paper's (1 hidden layer of 20 each):
    # 2 layers of 64 each cut the extrapolation RMSE at n = 30 / 50 / 100 from 0.148 / 0.111 /
    # 0.113 to the README's figures; at n = 100 only the larger decoder put the latent ODE
    # ahead of the GRUs on average over two seeds (PROVENANCE.md).
    field_width: int = 64  # hidden units per layer of the latent dynamics MLP (paper: 20)
    decoder_width: int = 64  # hidden units per layer of the decoder MLP (paper: 20)
    field_depth: int = 2  # hidden layers of the dynamics MLP (paper: 1; torchdiffeq: 2)
    decoder_depth: int = 2  # hidden layers of the decoder MLP (paper: 1)
    encoder: Literal["rnn", "odernn"] = "rnn"  # rnn: paper; odernn: Rubanova et al. 2019
    cell: Literal["gru", "tanh"] = "gru"  # RNN cell of the encoder and both baselines
    obs_std: float = 0.1  # fixed std of the latent ODE's Gaussian likelihood p(x | z)
    kl_weight: float = 1.0  # weight of KL(q(z0) || N(0, I)) in the loss (1: the ELBO)
    baselines: bool = True  # also train the two RNN baselines (same data, same batches)
    # Latent solves (training and evaluation).
    solver: Literal["bosh3", "dopri5", "tsit5"] = "dopri5"
    rtol: float = 1e-3
    atol: float = 1e-4
    # discrete: the exact gradient of the discretised solve; ~1/15 of the continuous adjoint's
    #   backward NFE here (56 vs ~800 per step at init) and ~3x faster steps
    adjoint: Literal["continuous", "discrete"] = "discrete"
    # Training: one optimiser over all models (the losses are summed, the parameters are
    # disjoint, so with Adam and no clipping each model trains as if alone).
    steps: int = 30000  # extrapolation keeps improving long after the window fit (n=30:
    #   RMSE 0.29 after a 10k-step cosine run, 0.15 after 25k of a 30k one)
    batch_size: int = 100  # spirals per step
    lr: float = 5e-3  # Adam, peak of the cosine schedule
    lr_schedule: Literal["constant", "cosine"] = "cosine"  # cosine decays to 0 at `steps`
    log_every: int = 100
    eval_every: int = 2500
    checkpoint_every: int = 2500
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
        require(self, "n_total", self.n_total >= self.n_grid + self.n_extrap, "too short")
        require(self, "kl_weight", self.kl_weight >= 0, "must be >= 0")
        require(self, "grad_clip", self.grad_clip == 0, "must be 0 (it would couple the models)")
        require(self, "num_plot", 1 <= self.num_plot <= self.num_test, "must be in [1, test]")


# --smoke: a run that finishes in seconds (the tests use it).
SMOKE = dict(
    num_train=16,
    num_test=4,
    n_grid=20,
    n_extrap=10,
    n_total=40,
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
