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
from ._reversible import ReversibleAdjoint as ReversibleAdjoint
from ._reversible import reversible as reversible
from ._settings import SolveSettings as SolveSettings
from ._solution import RESULTS as RESULTS
from ._solution import Solution as Solution
from ._solver import AbstractSolver as AbstractSolver
from ._solvers import SOLVERS as SOLVERS
from ._solvers import RungeKutta as RungeKutta

__version__ = "0.1.0"
