"""ode_jax: Neural ODE solvers in JAX with adjoint gradients."""

from ._adjoint import AbstractAdjoint as AbstractAdjoint
from ._adjoint import Solved as Solved
from ._adjoint import make_probe as make_probe
from ._adjoint import probe_stats as probe_stats
from ._continuous import ContinuousAdjoint as ContinuousAdjoint
from ._control import PIDController as PIDController
from ._control import rms_norm as rms_norm
from ._discrete import DiscreteAdjoint as DiscreteAdjoint
from ._event import Event as Event
from ._odeint import odeint as odeint
from ._regularise import PENALTIES as PENALTIES
from ._regularise import ErrorAccumulator as ErrorAccumulator
from ._regularise import Regulariser as Regulariser
from ._regularise import accumulate_error as accumulate_error
from ._regularise import hutchinson_probe as hutchinson_probe
from ._regularise import penalty_rates as penalty_rates
from ._regularise import regularised_field as regularised_field
from ._regularise import regularised_odeint as regularised_odeint
from ._regularise import steer_end_time as steer_end_time
from ._regularise import taylor_derivatives as taylor_derivatives
from ._reversible import ReversibleAdjoint as ReversibleAdjoint
from ._reversible import reversible as reversible
from ._settings import SolveSettings as SolveSettings
from ._solution import RESULTS as RESULTS
from ._solution import Solution as Solution
from ._solver import AbstractSolver as AbstractSolver
from ._solvers import SOLVERS as SOLVERS
from ._solvers import RungeKutta as RungeKutta

__version__ = "0.1.0"
