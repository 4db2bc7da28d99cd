"""Compile, count, time and measure one method on one problem.

Conventions (stated in the report too):

* Times are medians over interleaved rounds (every method's forward and gradient once per round)
  after a warm-up call; JAX calls end in ``jax.block_until_ready``.
* Compile time: ``jax.jit(fn).lower(params).compile()`` wall time (trace + lower + XLA compile),
  the median over ``--compiles`` interleaved compilations of fresh copies of each function
  (one compile alone varies by 10-30% on a shared machine, and the first in a process is slower).
* NFE: vector-field executions counted by a host callback in a separately compiled copy (the timed
  code has no callback), after every method has been timed (:func:`count_nfes`), so that the
  timed calls run before any callback in the process. Forward = the forward solve; backward =
  gradient run minus forward, where each backward execution is usually part of a VJP. torch: the
  module's own counter.
* Bimodal times: on the 2-core machine of the reports, some programs switch for seconds at a
  time between two speeds, whatever ran before them (case (c): ode_jax-discrete's gradient
  0.85-0.93 ms or 1.3-1.8 ms, diffrax-rca's 2.7-3.0 or 5-7 ms, both at once; the continuous
  adjoint's stays at 1.4 ms). A median over rounds then reports whichever speed most rounds
  saw; the per-round samples are kept in each runner's ``times``.
* Memory: JAX: ``compiled.memory_analysis().temp_size_in_bytes`` (XLA's temp buffers); all
  methods: the peak RSS increase over one gradient call (Linux VmHWM, reset through
  /proc/self/clear_refs), which includes allocator caching effects.
* Unit cost: one vector-field evaluation (and one VJP of it w.r.t. state and parameters) timed
  inside a compiled loop (JAX) or a Python loop (torch). Overhead = wall / (NFE x unit).
"""

from __future__ import annotations

import ctypes
import dataclasses
import os
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from experiments.common.report import markdown_table as markdown_table
from experiments.common.report import number as number

from .methods import JAX_METHODS, TORCH_METHODS, counting
from .problems import torch_sync


def _status():
    out = {}
    with open("/proc/self/status") as fh:
        for line in fh:
            key, _, value = line.partition(":")
            out[key] = value
    return out


def _kb(field: str) -> float:
    return float(_status()[field].split()[0])


def rss_peak_delta_mb(fn: Callable) -> float:
    """Peak resident-set growth while running fn(), in MiB (NaN where the kernel can't say)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand cached free memory back to the OS first
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")  # reset VmHWM to the current RSS
        base = _kb("VmRSS")
        fn()
        return (_kb("VmHWM") - base) / 1024
    except (OSError, AttributeError):
        return float("nan")


@dataclasses.dataclass
class Runner:
    """One method on one problem: zero-argument forward and gradient calls plus measurements."""

    name: str
    library: str  # "jax" or "torch"
    fwd: Callable
    grad: Callable
    compile_fwd_s: float = float("nan")
    compile_grad_s: float = float("nan")
    temp_fwd_mb: float = float("nan")
    temp_grad_mb: float = float("nan")
    nfe_fwd: float = float("nan")
    nfe_bwd: float = float("nan")
    rss_grad_mb: float = float("nan")
    times: dict = dataclasses.field(default_factory=lambda: {"fwd": [], "grad": []})
    recompile: Callable | None = None  # () -> (fwd seconds, grad seconds) of a fresh compile
    count: Callable | None = None  # () -> (NFE fwd, NFE bwd); see count_nfes
    compile_times: dict = dataclasses.field(default_factory=lambda: {"fwd": [], "grad": []})

    def add_compile(self, fwd_s: float, grad_s: float):
        """Record one more compilation; the reported compile times are the medians."""
        self.compile_times["fwd"].append(fwd_s)
        self.compile_times["grad"].append(grad_s)
        self.compile_fwd_s = float(np.median(self.compile_times["fwd"]))
        self.compile_grad_s = float(np.median(self.compile_times["grad"]))


def _aot(fn, *args):
    t0 = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    seconds = time.perf_counter() - t0
    mem = compiled.memory_analysis()
    temp = float("nan") if mem is None else mem.temp_size_in_bytes / 2**20
    return compiled, seconds, temp


def jax_runner(name: str, problem, count_nfe: bool = True, build: Callable | None = None) -> Runner:
    """``name``'s runner on ``problem``; ``build``: a method as in :mod:`benchmarks.methods`
    (default: ``JAX_METHODS[name]``)."""
    build = build or JAX_METHODS[name]
    solve = build(problem, problem.vf)
    params = problem.params

    def loss(p):
        return problem.loss(solve(p))

    fwd_c, cf, tf = _aot(solve, params)
    grad_c, cg, tg = _aot(jax.grad(loss), params)

    def recompile():
        # Fresh function objects, so jit's caches miss and XLA compiles again.
        return (
            _aot(lambda p: solve(p), params)[1],
            _aot(jax.grad(lambda p: loss(p)), params)[1],
        )

    r = Runner(
        name,
        "jax",
        fwd=lambda: jax.block_until_ready(fwd_c(params)),
        grad=lambda: jax.block_until_ready(grad_c(params)),
        temp_fwd_mb=tf,
        temp_grad_mb=tg,
        recompile=recompile,
    )
    r.add_compile(cf, cg)
    if count_nfe:
        r.count = lambda: count_solve(problem, build)
    return r


def count_solve(problem, build) -> tuple[int, int]:
    """(forward count, backward count) of field evaluations of a JAX method ``build(problem,
    vf) -> (params -> ys)`` on ``problem``: its forward solve, and its gradient of the loss."""
    solve = build(problem, counting(problem.vf, counter := [0]))
    params = problem.params
    return count_calls(
        counter,
        lambda: jax.jit(solve)(params),
        lambda: jax.jit(jax.grad(lambda p: problem.loss(solve(p))))(params),
    )


def count_calls(counter: list, fwd: Callable, grad: Callable) -> tuple[int, int]:
    """(forward count, backward count) of a counting vector field (see
    :func:`~benchmarks.methods.counting`) that adds to ``counter[0]``: ``fwd()`` runs the
    forward, ``grad()`` the forward and backward."""
    counter[0] = 0
    jax.block_until_ready(fwd())
    jax.effects_barrier()
    n_fwd, counter[0] = counter[0], 0
    jax.block_until_ready(grad())
    jax.effects_barrier()
    return n_fwd, counter[0] - n_fwd


def count_nfes(runners) -> None:
    """Fill in each runner's NFE counts; call it after every timing in the process (the
    module's conventions)."""
    for r in runners:
        if r.count is not None:
            r.nfe_fwd, r.nfe_bwd = r.count()


def torch_runner(name: str, problem) -> Runner:
    import torch

    func, y0, ts, loss = problem.make_torch()
    solve = TORCH_METHODS[name]
    params = list(func.parameters())

    def fwd():
        with torch.no_grad():
            ys = solve(func, y0, ts, problem.rtol, problem.atol)
        torch_sync()
        return ys

    def grad():
        for p in params:
            p.grad = None
        loss(solve(func, y0, ts, problem.rtol, problem.atol)).backward()
        torch_sync()
        return [p.grad for p in params]

    r = Runner(name, "torch", fwd=fwd, grad=grad)
    func.nfe = 0
    fwd()
    r.nfe_fwd = func.nfe
    func.nfe = 0
    for p in params:
        p.grad = None
    value = loss(solve(func, y0, ts, problem.rtol, problem.atol))
    n_forward = func.nfe
    value.backward()
    r.nfe_bwd = func.nfe - n_forward
    return r


def round_order(items, i: int) -> list:
    """The order in which round ``i`` runs ``items``: as given in round 0, a fixed (seeded)
    shuffle after that, so that no method always runs right after the same one.

    A rotation would not do: it keeps every method's predecessor. In benchmark (c) the method
    listed after torchdiffeq's adjoint then always ran right after it, and its 0.2 ms forward
    measured 2.46x jax.experimental.ode's where the same compiled loop, listed one further
    on, measured 1.39x (benchmarks/spiral_torch.md).
    """
    items = list(items)
    if i == 0:
        return items
    return [items[j] for j in np.random.default_rng(i).permutation(len(items))]


def compile_rounds(runners, compiles: int, log=lambda message: None) -> None:
    """Compile every runner again until each has ``compiles`` compilations (the first was
    made with the runner), one round at a time in :func:`round_order`; torch runners, which
    do not compile, are skipped."""
    for i in range(1, compiles):
        log(f"  compile round {i + 1} of {compiles} ...")
        for r in round_order(runners, i):
            if r.recompile is not None:
                r.add_compile(*r.recompile())


def interleaved_medians(fns: dict, rounds: int, sample_s: float = 0.1) -> dict:
    """Median seconds per call of each zero-argument function in ``fns`` (name -> fn).

    Every round calls each function once more, in the order :func:`round_order` gives, and a
    sample times back-to-back calls for at least ``sample_s`` seconds (sized by a warm-up
    call), so a short call is not timed alone.
    """
    calls = {}
    for name, fn in fns.items():
        t0 = time.perf_counter()
        fn()
        calls[name] = max(1, int(np.ceil(sample_s / max(time.perf_counter() - t0, 1e-9))))
    samples = {name: [] for name in fns}
    for i in range(rounds):
        for name in round_order(fns, i):
            t0 = time.perf_counter()
            for _ in range(calls[name]):
                fns[name]()
            samples[name].append((time.perf_counter() - t0) / calls[name])
    return {name: float(np.median(s)) for name, s in samples.items()}


def jax_unit_costs(problem) -> tuple[float, float]:
    """Seconds per vector-field evaluation and per VJP, inside a compiled loop."""
    vf, p, y0 = problem.vf, problem.params, problem.y0
    t = problem.ts[0]

    def evals(n, y):
        return jax.lax.fori_loop(0, n, lambda i, y: y + 1e-6 * vf(t, y, p), y)

    def vjps(n, y):
        def body(i, c):
            y, a, acc = c
            fy, pull = jax.vjp(lambda y_, p_: vf(t, y_, p_), y, p)
            gy, gp = pull(a)
            acc = jax.tree.map(lambda x, g: x + g, acc, gp)
            return y + 1e-6 * fy, a + 1e-6 * gy, acc

        acc = jax.tree.map(jnp.zeros_like, p)
        return jax.lax.fori_loop(0, n, body, (y, jnp.ones_like(y), acc))

    return _per_call(jax.jit(evals), y0), _per_call(jax.jit(vjps), y0)


def _per_call(fn, y0, target_s: float = 0.3) -> float:
    jax.block_until_ready(fn(2, y0))
    n = 2
    while True:
        t0 = time.perf_counter()
        jax.block_until_ready(fn(n, y0))
        dt = time.perf_counter() - t0
        if dt > target_s / 4 or n > 10**6:
            break
        n *= 4
    n = max(2, int(n * target_s / max(dt, 1e-9)))
    samples = []
    for _ in range(3):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(n, y0))
        samples.append((time.perf_counter() - t0) / n)
    return float(np.median(samples))


def pick_torch_threads(problem) -> int:
    """The faster of 1 thread and all cores for torch on this problem's vector field.

    With 2 threads on a busy 2-core machine, OpenMP's barriers made a small conv ~100x slower
    than with 1 thread, so torch gets the better of the two (chosen per problem, reported).
    """
    import torch

    best = None
    for threads in sorted({1, os.cpu_count() or 1}):
        torch.set_num_threads(threads)
        f_s, _ = torch_unit_costs(problem, target_s=0.1)
        if best is None or f_s < best[1]:
            best = (threads, f_s)
    torch.set_num_threads(best[0])
    return best[0]


def torch_unit_costs(problem, target_s: float = 0.3) -> tuple[float, float]:
    import torch

    func, y0, ts, _ = problem.make_torch()
    t = ts[0]
    params = list(func.parameters())

    def time_loop(step):
        step()
        n, elapsed = 0, 0.0
        t0 = time.perf_counter()
        while elapsed < target_s:
            step()
            n += 1
            elapsed = time.perf_counter() - t0
        return elapsed / n

    def evaluate():
        with torch.no_grad():
            func(t, y0)
        torch_sync()

    a = torch.ones_like(y0)

    def vjp():
        y = y0.detach().requires_grad_(True)
        torch.autograd.grad(func(t, y), [y, *params], grad_outputs=a)
        torch_sync()

    return time_loop(evaluate), time_loop(vjp)
