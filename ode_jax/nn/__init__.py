"""Equinox modules for neural ODEs: vector fields, time-conditioned layers and ODE blocks."""

from ._block import ODEBlock as ODEBlock
from ._cnf import CNF as CNF
from ._cnf import PlanarCNFField as PlanarCNFField
from ._cnf import divergence_exact as divergence_exact
from ._cnf import divergence_hutchinson as divergence_hutchinson
from ._cnf import flow_and_divergence as flow_and_divergence
from ._cnf import sample_noise as sample_noise
from ._conv import ConcatConv2d as ConcatConv2d
from ._latent import LatentODE as LatentODE
from ._latent import ODERNNEncoder as ODERNNEncoder
from ._latent import RecognitionRNN as RecognitionRNN
from ._latent import RNNBaseline as RNNBaseline
from ._latent import TanhRNNCell as TanhRNNCell
from ._latent import gaussian_kl as gaussian_kl
from ._latent import gaussian_log_density as gaussian_log_density
from ._latent import latent_ode_elbo as latent_ode_elbo
from ._latent import solve_on_union as solve_on_union
from ._latent import solve_per_sequence as solve_per_sequence
from ._linear import ConcatLinear as ConcatLinear
from ._linear import ConcatSquashLinear as ConcatSquashLinear
from ._linear import PlainLinear as PlainLinear
from ._mlp import MLPField as MLPField
from ._norm import GroupNorm as GroupNorm
from ._planar import PlanarFlow as PlanarFlow
from ._planar import standard_normal_log_prob as standard_normal_log_prob
