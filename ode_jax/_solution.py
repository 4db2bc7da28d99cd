"""The result of a solve: outputs, statistics and a result code."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp


class RESULTS:
    """Result codes carried by :class:`Solution` (``sol.result``) when ``throw=False``."""

    successful = 0
    max_steps_reached = 1
    step_size_underflow = 2
    nonfinite = 3
    nonfinite_y0 = 4
    nonfinite_args = 5
    newton_failed = 6
    singular = 7

    messages = (
        "successful",
        "the solver took max_steps steps without reaching the final time; raise max_steps "
        "or loosen rtol/atol",
        "the step size fell below the floating-point resolution of t (the problem may be stiff: "
        "try solver='kvaerno5' or 'rodas5'; or it blows up in finite time)",
        "the state or the error estimate became non-finite (NaN/inf) and shrinking the step "
        "did not help",
        "y0 contains NaN or inf: the initial state must be finite",
        "args contains NaN or inf (a parameter or other float array passed to f is not finite)",
        "the implicit solver's Newton iteration did not converge even as the step size "
        "shrank to the floating-point resolution of t (with throw=False, sol.result and "
        "sol.stats show where it stopped); loosen rtol/atol or try solver='rodas5' (in the "
        "backward solve of a continuous adjoint on a stiff problem: use "
        "ode_jax.ContinuousAdjoint(interpolate=True))",
        "the iteration matrix I - h*gamma*J of the implicit solver was singular (or not "
        "finite) at every step size tried: the Jacobian of f is singular or infinite there "
        "(check f near the failing state, e.g. sqrt or log at 0) or try another method; in the "
        "backward solve of a continuous adjoint on a stiff problem, y itself blows up when "
        "solved backwards: use ode_jax.ContinuousAdjoint(interpolate=True)",
    )

    @classmethod
    def message(cls, code: int) -> str:
        return cls.messages[int(code)]


class Solution(eqx.Module):
    """Output of :func:`ode_jax.odeint`.

    Attributes:
        ts: the output times, shape (T,).
        ys: pytree like y0; each leaf has a leading axis of length T. Outputs the solver did not
            reach (only possible with ``throw=False``) are NaN.
        stats: dict of int32 arrays: "nfe" (vector-field evaluations), "num_steps" (attempted
            steps), "num_accepted", "num_rejected".
        result: int32 result code, see :class:`RESULTS` (0 means success).
        dt_next: the step size (magnitude) the controller proposes after the last step; pass it
            as ``dt0`` to a solve that continues from ``ts[-1]`` to skip the initial-step search.
            NaN for a length-1 ``ts`` without ``dt0``.
        step_ts, step_ys: with ``save_steps=True``, every accepted step's end time and state,
            padded to ``max_steps`` (inf / NaN); ``stats["num_accepted"]`` of them are real.
        event_time, event_state, event_happened: with an ``event``, when and where the solve
            stopped (event_time is +-inf when no event happened; event_state is then the
            state at the end). Outputs at times after the event hold the event state.
    """

    ts: jax.Array
    ys: object
    stats: dict
    result: jax.Array
    dt_next: jax.Array | None = None
    step_ts: jax.Array | None = None
    step_ys: object = None
    event_time: jax.Array | None = None
    event_state: object = None
    event_happened: jax.Array | None = None
    solved: object = None  # the recorded steps, with dense=True
    direction: object = 1.0  # +1 or -1: the direction of integration

    @property
    def succeeded(self) -> jax.Array:
        return self.result == RESULTS.successful

    def evaluate(self, t):
        """y(t) from the solver's dense output, for t (a scalar or an array of times) in the
        solved interval (NaN outside it). Needs ``odeint(..., dense=True)``. Differentiable
        w.r.t. y0, args and t under every adjoint: the discrete and reversible adjoints give
        the exact derivative of the interpolant, the continuous adjoint that of the exact
        solution (a backward solve from t per time)."""
        if self.solved is None or self.solved.evaluator is None:
            raise ValueError(
                "sol.evaluate needs a solve with dense output: odeint(..., dense=True)"
            )
        t = jnp.asarray(t)
        if not jnp.issubdtype(t.dtype, jnp.floating):
            t = t.astype(self.ts.dtype)
        s = (self.direction * t).astype(self.ts.dtype)

        def one(s_):
            return self.solved.evaluator(self.solved, s_, False)

        if s.ndim == 0:
            return one(s)
        flat = jax.vmap(one)(s.reshape(-1))
        return jax.tree.map(lambda v: v.reshape(s.shape + v.shape[1:]), flat)


def raise_if_failed(tree, result, prefix: str = "ode_jax.odeint"):
    """Attach a runtime error to ``tree`` that fires (also under jit/vmap) when result != 0."""
    codes = jnp.arange(len(RESULTS.messages), dtype=jnp.int32)
    result = jnp.asarray(result).astype(jnp.int32)
    # Rebuild the index from comparisons: an int output of a custom_vjp can carry a float0
    # tangent, which equinox's error machinery cannot differentiate under vmap.
    index = jnp.sum(jnp.where(codes == result, codes, 0)).astype(jnp.int32)
    return eqx.branched_error_if(
        tree, index != RESULTS.successful, index, [f"{prefix}: {m}" for m in RESULTS.messages]
    )
