"""Equinox modules for neural ODEs: vector fields, time-conditioned layers and ODE blocks."""

from ._block import ODEBlock as ODEBlock
from ._conv import ConcatConv2d as ConcatConv2d
from ._linear import ConcatLinear as ConcatLinear
from ._linear import ConcatSquashLinear as ConcatSquashLinear
from ._linear import PlainLinear as PlainLinear
from ._mlp import MLPField as MLPField
from ._norm import GroupNorm as GroupNorm
