"""The solver interface: what the stepping loop and the adjoints ask of a method.

The loop in :mod:`ode_jax._loop` is written against :class:`AbstractSolver` only. A solver takes
one step at a time from (t, y) with a given step size, returns an error estimate (adaptive
methods) and the data its dense output needs, and carries a per-solve state between steps (an
FSAL stage, a Jacobian and its LU factors, a second reversible state, ...).

Integration always runs forwards in time inside the loop: ``dt > 0``.
"""

import abc
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp


def tree_where(pred, a, b):
    """``jnp.where(pred, a, b)`` leaf by leaf over two pytrees of the same structure."""
    return jax.tree.map(lambda x, y: jnp.where(pred, x, y), a, b)


def all_finite(tree, concatenate: bool = False) -> jax.Array:
    """Whether every float (or complex) array in ``tree`` is free of NaN and inf.

    Written as a float sum of ``|x| * 0`` (0 where x is finite, NaN where it is not), not as
    ``jnp.all(jnp.isfinite(x))``: XLA:CPU decomposes a boolean reduction into several kernels
    and compiles it more slowly (a 256x32 array alone: 38.7 against 22.0 ms). The input check
    of a failed solve written this way took benchmark (a)'s forward compile from 0.39 to 0.35 s
    (0.31 s without any check; ``python -m benchmarks.finite_check``). ``concatenate``: one
    reduction over all leaves joined (the smallest program, for checks off the hot path)
    instead of one per leaf (no copy).
    """
    mags = [jnp.abs(x) for x in jax.tree.leaves(tree) if eqx.is_inexact_array(x)]  # real
    if not mags:
        return jnp.asarray(True)
    if concatenate and len(mags) > 1:
        dtype = jnp.result_type(*mags)
        mags = [jnp.concatenate([jnp.ravel(x).astype(dtype) for x in mags])]
    total = sum(jnp.sum(x * 0).astype(jnp.float32) for x in mags)
    return jnp.isfinite(total)


class AbstractSolver(eqx.Module):
    """A one-step method for dy/dt = f(t, y, args).

    Subclasses define ``name``, ``order`` and ``adaptive`` (fields or properties) and the
    methods :meth:`init`, :meth:`step` and :meth:`interpolate`. Everything else has a default
    that is correct for any solver; override it for speed (see :class:`ode_jax.RungeKutta`).

    Solvers are static: the loop closes over them, so they must not hold arrays that should
    be traced (tolerances and parameters travel separately).
    """

    # A short name for messages; the order of the propagated solution (the step-size
    # controller uses it); whether step() returns an error estimate (else dt0 is the step).
    name: eqx.AbstractVar[str]
    order: eqx.AbstractVar[int]
    adaptive: eqx.AbstractVar[bool]

    # Solvers that need the solve's tolerances (e.g. for a Newton iteration's stopping test)
    # set this; their init then takes a keyword ``tols`` (an ode_jax._loop.Tolerances).
    needs_tolerances = False
    # Whether JAX can differentiate :meth:`fixed_step` in reverse mode to any order (no loops of
    # run-time length, such as a Newton iteration): the discrete adjoint is then differentiable
    # twice.
    differentiable_steps = True

    @abc.abstractmethod
    def init(self, f, t0, y0, args, f0=None) -> tuple[Any, jax.Array]:
        """The per-solve state at (t0, y0) and the number of evaluations of f it cost.

        ``f0``: f(t0, y0, args) when the caller already has it (it computed the initial step
        size), else None.
        """

    @abc.abstractmethod
    def step(self, f, t, y, dt, args, state):
        """One step from (t, y) of size dt > 0.

        Returns ``(y1, y_error, dense_info, state, nfe)``: the new state, the local error
        estimate (a pytree like y, or None for a fixed-step method), whatever
        :meth:`interpolate` needs, the state after an accepted step, and the number of
        evaluations of f (an int32 scalar).
        """

    @abc.abstractmethod
    def interpolate(self, dense_info, theta):
        """y at ``t + theta * dt`` within the step that produced ``dense_info`` (theta in
        [0, 1]); at theta = 1 it must equal the step's y1."""

    def counters(self, state) -> dict:
        """Work counters the solver keeps in its state beyond f evaluations (e.g.
        {"num_jacobians", "num_lu"}), reported in ``sol.stats``. Default: none."""
        return {}

    def failure(self, state) -> jax.Array:
        """A result code (see :class:`ode_jax.RESULTS`) explaining why the last step failed,
        reported if the step size then underflows; 0 when the step itself did not fail."""
        return jnp.asarray(0, jnp.int32)

    def interpolate_vjp(self, dense_info, theta, ct):
        """Cotangents ``(ct_dense_info, ct_theta)`` of :meth:`interpolate` at theta given the
        output's cotangent ``ct`` (default: ``jax.vjp``)."""
        _, pull = jax.vjp(self.interpolate, dense_info, theta)
        return pull(ct)

    def select_state(self, accept, old_state, new_state, dense_info):
        """The state to carry after a step is accepted (``accept``) or rejected."""
        return tree_where(accept, new_state, old_state)

    def looped(self) -> "AbstractSolver":
        """The same method arranged so that f appears once in the compiled program (used for
        the continuous adjoint's backward solve, whose field is a VJP). Default: itself."""
        return self

    # -- the discrete adjoint ------------------------------------------------------------
    # The discrete adjoint records the accepted (t, dt) and checkpointed states, recomputes
    # steps from them and pulls cotangents back through each step. The defaults rebuild a
    # step with init + step and differentiate it with jax.vjp; solvers with a cheaper exact
    # rule (explicit RK: stage by stage; implicit: the converged stage equations) override.

    def checkpoint_state(self, state):
        """The part of the state that cannot be recomputed from (t, y) alone and must be stored
        with each checkpoint (default: nothing)."""
        return None

    def recompute(self, f, t, y, dt, args, saved, with_dense):
        """Redo an accepted step for the backward pass.

        ``saved``: :meth:`checkpoint_state` of the state before the step. ``with_dense``: a
        traced bool, whether the dense output of this step is needed. Returns
        ``(y1, dense_info, saved1, nfe)``.
        """
        state, nfe0 = self._restart(f, t, y, args, saved)
        y1, _, info, state1, nfe = self.step(f, t, y, dt, args, state)
        return y1, info, self.checkpoint_state(state1), nfe0 + nfe

    def step_vjp(
        self, f, t, y, dt, args, saved, dense_info, ct_y1, ct_saved1, ct_dense, with_dense
    ):
        """Cotangents of (y, saved, args, t) of an accepted step, given those of its y1, its
        checkpoint state after the step (``saved1``) and its dense_info. Returns
        ``(ct_y, ct_saved, ct_args, ct_t, nfe)``; dt is held constant."""

        def run(y_, saved_, a_, t_):
            state, nfe0 = self._restart(f, t_, y_, a_, saved_)
            y1, _, info, state1, nfe = self.step(f, t_, y_, dt, a_, state)
            return (y1, self.checkpoint_state(state1), info), nfe0 + nfe

        _, pull, nfe = jax.vjp(run, y, saved, args, t, has_aux=True)
        ct_y, ct_saved, ct_a, ct_t = pull((ct_y1, ct_saved1, ct_dense))
        return ct_y, ct_saved, ct_a, ct_t, 2 * nfe

    def linearize_step(self, f, t, y, dt, args, saved, with_dense, memory=None):
        """An accepted step redone for the backward pass, with its VJP: returns
        ``(dense_info, pull, nfe)``, where ``pull(ct_y1, ct_saved1, ct_dense)`` returns what
        :meth:`step_vjp` does. The discrete adjoint calls this; the default is
        :meth:`recompute` then :meth:`step_vjp` (a solver that can keep its stage
        evaluations for their VJPs overrides it, as :class:`ode_jax.RungeKutta` does).
        ``memory``: bytes the step may keep alive between the two (None: no limit; 0:
        nothing, as ``DiscreteAdjoint(keep_stages=False)`` asks)."""
        _, info, _, nfe = self.recompute(f, t, y, dt, args, saved, with_dense)

        def pull(ct_y1, ct_saved1, ct_dense):
            return self.step_vjp(
                f, t, y, dt, args, saved, info, ct_y1, ct_saved1, ct_dense, with_dense
            )

        return info, pull, nfe

    def fixed_step(self, f, t, y, dt, args, saved):
        """An accepted step redone from ``(t, y, saved)`` as plain JAX code that JAX can
        differentiate in every mode and to any order (the discrete adjoint's second
        derivatives). Returns ``(y1, dense_info, saved1)``."""
        state, _ = self._restart(f, t, y, args, saved)
        y1, _, info, state1, _ = self.step(f, t, y, dt, args, state)
        return y1, info, self.checkpoint_state(state1)

    def _restart(self, f, t, y, args, saved):
        """A state at (t, y) for recomputation from a checkpoint (default: :meth:`init`; a
        solver with a :meth:`checkpoint_state` rebuilds its state from ``saved``)."""
        return self.init(f, t, y, args)
