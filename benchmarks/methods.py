"""The solvers compared: every one is dopri5 at the problem's rtol/atol, saving at problem.ts.

A JAX method is ``solve(problem, vf) -> (params -> ys)`` (``vf`` may be a counting wrapper of
``problem.vf``); a torch method is ``solve(func, y0, ts, rtol, atol) -> ys``.
"""

from __future__ import annotations

from collections.abc import Callable

import jax

import ode_jax

# Names of the JAX reference implementations ("anchors") the ratios are taken against.
ANCHORS = ("diffrax-rca", "diffrax-backsolve", "jax.experimental.ode")


def ode_jax_method(
    adjoint: str | ode_jax.AbstractAdjoint,
    controller: ode_jax.PIDController | None = None,
    solver="dopri5",
) -> Callable:
    """ode_jax's dopri5 with ``adjoint`` (a name or object; ``controller``, None: the default one;
    ``solver``: dopri5 in another layout, e.g. ``ode_jax.SOLVERS["dopri5"].looped()``)."""

    def build(problem, vf):
        def solve(params):
            sol = ode_jax.odeint(
                vf,
                problem.y0,
                problem.ts,
                params,
                solver=solver,
                rtol=problem.rtol,
                atol=problem.atol,
                adjoint=adjoint,
                controller=controller,
            )
            return sol.ys

        return solve

    return build


def _diffrax(adjoint_name: str) -> Callable:
    def build(problem, vf):
        import diffrax

        adjoint = (
            diffrax.RecursiveCheckpointAdjoint()
            if adjoint_name == "rca"
            else diffrax.BacksolveAdjoint()
        )
        term = diffrax.ODETerm(vf)
        ts = problem.ts

        def solve(params):
            sol = diffrax.diffeqsolve(
                term,
                diffrax.Dopri5(),
                ts[0],
                ts[-1],
                None,
                problem.y0,
                params,
                saveat=diffrax.SaveAt(ts=ts),
                stepsize_controller=diffrax.PIDController(rtol=problem.rtol, atol=problem.atol),
                adjoint=adjoint,
                max_steps=4096,
            )
            return sol.ys

        return solve

    return build


def _jax_experimental(problem, vf):
    from jax.experimental.ode import odeint

    def solve(params):
        return odeint(
            lambda y, t, p: vf(t, y, p),
            problem.y0,
            problem.ts,
            params,
            rtol=problem.rtol,
            atol=problem.atol,
        )

    return solve


JAX_METHODS: dict[str, Callable] = {
    "ode_jax-discrete": ode_jax_method("discrete"),
    "ode_jax-continuous": ode_jax_method("continuous"),
    "diffrax-rca": _diffrax("rca"),
    "diffrax-backsolve": _diffrax("backsolve"),
    "jax.experimental.ode": _jax_experimental,
}


def _torchdiffeq(adjoint: bool) -> Callable:
    def solve(func, y0, ts, rtol, atol):
        import torchdiffeq

        fn = torchdiffeq.odeint_adjoint if adjoint else torchdiffeq.odeint
        return fn(func, y0, ts, rtol=rtol, atol=atol, method="dopri5")

    return solve


TORCH_METHODS: dict[str, Callable] = {
    "torchdiffeq": _torchdiffeq(False),
    "torchdiffeq-adjoint": _torchdiffeq(True),
}


def counting(vf: Callable, counter: list) -> Callable:
    """``vf`` that adds one to ``counter[0]`` (from the host) every time it is executed."""

    def bump():
        counter[0] += 1

    def wrapped(t, y, args):
        jax.debug.callback(bump)
        return vf(t, y, args)

    return wrapped


def torch_available() -> bool:
    try:
        import torch  # noqa: F401
        import torchdiffeq  # noqa: F401
    except ImportError:
        return False
    return True


def select_torch_device(choice: str) -> str:
    """Make ``choice`` ("auto", "cpu" or "cuda") torch's default device; returns the one used.

    "auto" is "cuda" when JAX itself runs on a GPU and torch sees one, so both libraries are
    timed on the same processor; every torch tensor and module of the benchmarks is made there.
    """
    import jax
    import torch

    if choice == "auto":
        choice = "cuda" if jax.default_backend() == "gpu" and torch.cuda.is_available() else "cpu"
    if choice == "cuda" and not torch.cuda.is_available():
        raise ValueError("torch_device='cuda', but torch sees no CUDA device")
    if choice == "cuda":  # float32 arithmetic, as JAX's (see float32_on_gpu), not TF32
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    torch.set_default_device(choice)
    return choice


def float32_on_gpu() -> bool:
    """On a GPU, make JAX's float32 matmuls and convolutions full float32 (its default there may
    use TF32); True when it did. Every library in the report then computes in float32."""
    import jax

    if jax.default_backend() != "gpu":
        return False
    jax.config.update("jax_default_matmul_precision", "highest")
    return True
