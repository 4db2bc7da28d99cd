"""The regularisation flags shared by the spiral, ODE-Net and CNF experiments (issue 21).

A mixin of config fields: ``--reg {none,kinetic,jacobian,rnode,taynode,error,steer}`` picks what
the training loss adds (see :class:`ode_jax.Regulariser`), ``--reg-weight`` its weight.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import ode_jax

from .base import require

# Each --reg's penalties (the names of ode_jax.Regulariser); rnode: RNODE's pair (Finlay et al.
# 2020), kinetic energy plus Jacobian Frobenius norm, both at --reg-weight.
PENALTIES = {
    "kinetic": ("kinetic",),
    "jacobian": ("jacobian",),
    "rnode": ("kinetic", "jacobian"),
    "taynode": ("taynode",),
    "error": ("error",),
}
REGS = ("none", *PENALTIES, "steer")


@dataclasses.dataclass(frozen=True)
class RegularisationFields:
    # what the training loss adds: kinetic (∫||f||²), jacobian (∫||∂f/∂y||_F², Hutchinson),
    # rnode (kinetic + jacobian, one weight), taynode (∫||d^K y/dt^K||², jet), error (Σ local
    # error estimates; discrete adjoint only), steer (random end time, no penalty); none: plain
    reg: Literal["none", "kinetic", "jacobian", "rnode", "taynode", "error", "steer"] = "none"
    # weight of the penalty in the loss: the field penalties enter as means over the state's
    # elements (sum / size: batch and dimension alike), "error" as the accumulated RMS estimate
    reg_weight: float = 0.01
    reg_order: int = 2  # taynode: K, the order of the penalised time derivative
    # steer: half width b of the end time's U(T - b, T + b), as a fraction of the last interval
    steer: float = 0.5

    def check(self):
        super().check()
        require(self, "reg_weight", self.reg_weight >= 0, "must be >= 0")
        require(self, "reg_order", self.reg_order >= 1, "must be >= 1")
        require(self, "steer", 0 <= self.steer < 1, "must be in [0, 1)")

    def regulariser(self, interval: float = 1.0) -> ode_jax.Regulariser | None:
        """The :class:`ode_jax.Regulariser` of ``--reg`` (None for "none"); ``interval``: the
        length of the last time interval of a training solve (STEER's b is a fraction of it)."""
        if self.reg == "none":
            return None
        if self.reg == "steer":
            return ode_jax.Regulariser(steer=self.steer * interval)
        return ode_jax.Regulariser(PENALTIES[self.reg], order=self.reg_order)

    def penalty(self, penalties: dict, size: int):
        """The weighted penalty the loss adds: ``reg_weight * value`` (field penalties divided
        by the state's ``size``: means over its elements)."""
        names = [name for name in PENALTIES.get(self.reg, ()) if name in penalties]
        if not names:
            return 0.0
        scale = 1.0 if self.reg == "error" else 1.0 / size
        return self.reg_weight * scale * sum(penalties[name] for name in names)
