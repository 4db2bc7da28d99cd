"""Continuous normalizing flows vs planar flows on 2-D densities (paper Section 4, FFJORD toys)."""

from __future__ import annotations

import dataclasses
from typing import Literal

from ode_jax.data import POTENTIALS as POTENTIAL_NAMES
from ode_jax.data import TOY_DATASETS as DATASET_NAMES

from .base import TrainConfig, require
from .regularise import RegularisationFields


@dataclasses.dataclass(frozen=True)
class CNFConfig(RegularisationFields, TrainConfig):
    """Task and target; model (planar NF, planar CNF or FFJORD MLP CNF); solver; training."""

    out: str = "runs/cnf"  # folder for everything the run writes
    # density: minimise KL(q||p) to exp(-U) (paper Fig. 4); mle: maximum likelihood on samples
    task: Literal["density", "mle"] = "density"
    # density: a potential U1..U4 (Rezende & Mohamed 2015); mle: a toy dataset (FFJORD)
    data: str = "U1"
    # nf: K planar layers; cnf_planar: the paper's planar CNF; cnf_mlp: FFJORD's ConcatSquash MLP
    model: Literal["nf", "cnf_planar", "cnf_mlp"] = "cnf_planar"
    width: int = 8  # nf: layers K; cnf_planar: hidden units M; cnf_mlp: units per hidden layer
    depth: int = 3  # cnf_mlp: hidden layers
    hyper_width: int = 32  # cnf_planar: hidden units of the hypernetwork of t
    divergence: Literal["exact", "hutchinson"] = "exact"  # CNF trace during training
    noise: Literal["gaussian", "rademacher"] = "gaussian"  # Hutchinson probes
    t1: float = 1.0  # CNF integration time (data at 0, base N(0, I) at t1)
    solver: Literal["bosh3", "dopri5", "tsit5"] = "dopri5"  # adaptive RK method
    rtol: float = 1e-5  # relative tolerance of every solve
    atol: float = 1e-5  # absolute tolerance
    adjoint: Literal["continuous", "discrete"] = "continuous"  # how gradients are computed
    steps: int = 1000  # optimiser steps
    batch_size: int = 256  # samples per step (fresh every step: base or data samples)
    lr: float = 3e-3  # learning rate (of --optimizer; peak value under a schedule)
    lr_schedule: Literal["constant", "cosine", "step"] = "cosine"  # decays to 0 at `steps`
    eval_samples: int = 8192  # fresh samples for the final loss / test NLL (exact trace)
    grid_size: int = 100  # points per axis of the density plot grid
    grid_lim: float = 4.0  # the grid covers [-grid_lim, grid_lim]^2
    log_every: int = 50  # steps between training-curve rows
    eval_every: int = 500  # steps between evaluations
    checkpoint_every: int = 500  # steps between checkpoints

    def check(self):
        super().check()
        names = POTENTIAL_NAMES if self.task == "density" else DATASET_NAMES
        require(self, "data", self.data in names, f"for task={self.task!r} must be one of {names}")
        require(self, "width", self.width >= 1, "must be >= 1")
        require(self, "depth", self.depth >= 1, "must be >= 1")
        require(self, "hyper_width", self.hyper_width >= 1, "must be >= 1")
        require(self, "t1", self.t1 > 0, "must be positive")
        require(self, "eval_samples", self.eval_samples >= 2, "must be >= 2")
        require(self, "grid_size", self.grid_size >= 2, "must be >= 2")
        require(self, "grid_lim", self.grid_lim > 0, "must be positive")
        ok = self.reg != "error" or self.adjoint == "discrete"
        require(self, "reg", ok, "(the error estimate) needs --adjoint discrete")
        require(self, "reg", self.reg == "none" or self.model != "nf", "needs a CNF model")


# --smoke: a run that finishes in seconds (the tests use it).
SMOKE = dict(
    steps=4,
    batch_size=16,
    width=4,
    hyper_width=8,
    rtol=1e-3,
    atol=1e-3,
    eval_samples=64,
    grid_size=12,
    log_every=2,
    eval_every=2,
    checkpoint_every=2,
)

# The grids of `python -m experiments.cnf grid {density,mle}`: (run name, config overrides).
# Density matching: the paper's Figure 4 (K, M = 2, 8, 32). Maximum likelihood: the paper's
# Figure 5 widths (64) plus FFJORD's field.
DENSITY_GRID = (
    [(f"nf{k}", dict(model="nf", width=k)) for k in (2, 8, 32)]
    + [(f"cnf_planar{m}", dict(model="cnf_planar", width=m)) for m in (2, 8, 32)]
    + [("nf32_10k", dict(model="nf", width=32, steps=10000))]  # NF steps are cheap: 5x more
)
MLE_GRID = [
    ("nf64", dict(model="nf", width=64)),
    ("cnf_planar64", dict(model="cnf_planar", width=64)),
    ("cnf_mlp_exact", dict(model="cnf_mlp", width=64, divergence="exact")),
    ("cnf_mlp_hutch", dict(model="cnf_mlp", width=64, divergence="hutchinson")),
]
MLE_DATA = ("circles", "moons", "8gaussians", "pinwheel", "checkerboard", "2spirals")
