"""Image classification with ODE-Net, ResNet and RK-Net (paper Table 1; torchdiffeq odenet_mnist).

Defaults follow torchdiffeq's ``odenet_mnist.py``: batch 128, SGD momentum 0.9, lr 0.1 divided by
10 after 60, 100 and 140 of 160 epochs, random 28x28 crops of the 4-pixel-padded image.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from ode_jax.data import DEFAULT_IDX_DIR

from .base import TrainConfig, require
from .regularise import RegularisationFields

TRAIN_SIZE = 60_000  # images in the MNIST / Fashion-MNIST training files
VAL_SIZE = 5_000  # held out of the training files for model selection
BATCHES_PER_EPOCH = -(-(TRAIN_SIZE - VAL_SIZE) // 128)  # 430
MODELS = ("odenet", "resnet", "rknet")


@dataclasses.dataclass(frozen=True)
class ODENetConfig(RegularisationFields, TrainConfig):
    """Data, model, solver and training of one classifier."""

    out: str = "runs/odenet"  # folder for everything the run writes
    # folder of the four MNIST-format IDX files (default: Fashion-MNIST as installed by apt);
    # "": generated stand-in images (the --smoke default: no dataset needed, numbers meaningless)
    data_dir: str = DEFAULT_IDX_DIR
    val_size: int = VAL_SIZE  # training images held out for validation (model selection)
    augment: bool = True  # random crops of the zero-padded training images
    crop_padding: int = 4  # pixels of zero padding before the random crop
    model: Literal["odenet", "resnet", "rknet"] = "odenet"  # rknet: ODE block, discrete adjoint
    width: int = 64  # channels after downsampling
    res_blocks: int = 6  # residual blocks of the ResNet
    solver: Literal["bosh3", "dopri5", "tsit5"] = "dopri5"  # ODE block's adaptive RK method
    rtol: float = 1e-3  # ODE block's relative tolerance (training and evaluation)
    atol: float = 1e-3  # ODE block's absolute tolerance
    seminorm: bool = False  # odenet's continuous adjoint: parameters out of the backward error norm
    # ODE block's ConcatConv2d: auto = shifted matmuls on CPU (fast gradients in loops), else native
    conv_impl: Literal["auto", "matmul", "native"] = "auto"
    max_steps: int = 1024  # ODE block's step limit per solve
    eval_batch: int = 1000  # images per evaluation batch
    measure_step: bool = True  # after training: a step's memory and time (one more compile)
    optimizer: Literal["adam", "sgd"] = "sgd"  # SGD with momentum, as torchdiffeq
    momentum: float = 0.9  # SGD momentum
    lr: float = 0.1  # initial learning rate
    lr_schedule: Literal["constant", "cosine", "step"] = "step"  # x lr_decay at each boundary
    lr_boundaries: tuple[float, ...] = (0.375, 0.625, 0.875)  # epochs 60, 100, 140 of 160
    lr_decay: float = 0.1  # learning-rate factor at each boundary
    batch_size: int = 128  # images per step
    steps: int = 160 * BATCHES_PER_EPOCH  # 160 epochs of 55k images
    log_every: int = 43  # steps between training-curve rows (10 per epoch)
    eval_every: int = BATCHES_PER_EPOCH  # validation once per epoch
    checkpoint_every: int = BATCHES_PER_EPOCH  # one checkpoint per epoch

    def check(self):
        super().check()
        require(self, "val_size", self.val_size >= 1, "must be >= 1")
        require(self, "crop_padding", self.crop_padding >= 0, "must be >= 0")
        require(self, "width", self.width >= 2 and self.width % 2 == 0, "must be even, >= 2")
        require(self, "res_blocks", self.res_blocks >= 1, "must be >= 1")
        require(self, "eval_batch", self.eval_batch >= 1, "must be >= 1")
        ok = self.reg != "error" or self.model == "rknet"
        require(self, "reg", ok, "(the error estimate) needs the discrete adjoint: --model rknet")
        require(self, "reg", self.reg == "none" or self.model != "resnet", "needs an ODE block")


# --smoke: a run that finishes in seconds on generated stand-in images (no dataset needed).
SMOKE = dict(
    data_dir="",
    val_size=16,
    width=8,
    res_blocks=2,
    rtol=1e-2,
    atol=1e-2,
    steps=4,
    batch_size=8,
    eval_batch=16,
    measure_step=False,
    conv_impl="native",  # the smallest graph: compiles fastest
    log_every=2,
    eval_every=2,
    checkpoint_every=2,
)


@dataclasses.dataclass(frozen=True)
class NFEStudyConfig:
    """Figure 3 on a trained ODE-Net: NFE against tolerance, wall time, backward NFE, training."""

    # an experiments.odenet run folder (its config and checkpoint); with --smoke and no run
    # there, a --smoke ODE-Net is trained first in OUT/smoke_odenet_run
    run: str = "runs/odenet"
    out: str = "results/nfe_study"  # folder for the CSV and PNG files
    tols: tuple[float, ...] = (1e-1, 3e-2, 1e-2, 3e-3, 1e-3, 3e-4, 1e-4, 3e-5, 1e-5)  # rtol = atol
    ref_tol: float = 1e-7  # tolerance of the reference solve the error is measured against
    batch: int = 256  # test images per solve
    repeats: int = 5  # timed repetitions per tolerance (median reported)
    smoke: bool = False  # tiny sizes for the tests

    def __post_init__(self):
        if not self.tols or any(not 0 < t < 1 for t in self.tols):
            raise ValueError(f"NFEStudyConfig.tols={self.tols!r} must be in (0, 1)")
        if self.batch < 1 or self.repeats < 1:
            raise ValueError("NFEStudyConfig.batch and .repeats must be >= 1")


NFE_SMOKE = dict(tols=(1e-1, 1e-2), ref_tol=1e-4, batch=8, repeats=1)
