"""Forward solves of a small system on the CPU: XLA's one-kernel loops and the output count.

    python -m benchmarks.small_system --outputs 2,100,1000 --out benchmarks/small_system.md

XLA:CPU runs a program kernel by kernel, a few tens of nanoseconds each; for a 2-dimensional
system a step of dopri5 is a few dozen tiny kernels, so that cost is most of the time. A while
loop whose body and condition access under ``xla_cpu_small_while_loop_byte_threshold`` bytes
(1024 by default) is instead compiled into a single kernel. Whether a solver's stepping loop
falls under that limit decides its speed on such systems, not its arithmetic.

Case (c) of ``benchmarks.run`` (the cubic spiral, float32, dopri5 at rtol 1e-6), solved with a
varying number of output times, alone and vmapped over a batch of initial states, once with
XLA's default limit and once with it raised (each setting in its own process: XLA reads its
flags once). Reports the median time of a call and how many while loops XLA compiled into one
kernel (``loops 1k``: its ``xla_cpu_small_call`` count).
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time

from . import cli

RAISED = 1 << 30
METHODS = (
    "ode_jax",
    "ode_jax observed_order=True",
    "ode_jax pcoeff=0",
    "jax.experimental.ode",
    "diffrax-rca",
)


@dataclasses.dataclass(frozen=True)
class Flags:
    outputs: tuple[str, ...] = ("2,100,1000",)
    """numbers of output times (evenly spaced on [0, 25])"""
    batch: int = 16
    """vmapped batch size of the second set of rows (0: none)"""
    rounds: int = 7
    """timed rounds per method; each round is the mean of enough calls for ~0.1 s"""
    out: str = ""
    """write the markdown table here too ('' = print only)"""
    worker: int = -1
    """internal: the XLA threshold of a worker process (-1: the parent)"""


def _builder(method):
    """``problem, vf -> (params -> ys)`` for a row of the table."""
    from .methods import JAX_METHODS, ode_jax_method

    if not method.startswith("ode_jax"):
        return JAX_METHODS[method]
    import ode_jax

    # The default controller (in forward solves: pcoeff=0.2, no observed-order rule), the rule
    # forced on, or the plain integral controller (no previous-error term in the loop).
    observed = True if method.endswith("observed_order=True") else None
    pcoeff = 0.0 if method.endswith("pcoeff=0") else None
    controller = ode_jax.PIDController(pcoeff=pcoeff, observed_order=observed)
    return ode_jax_method("continuous", controller)


def _measure(flags: Flags) -> list[dict]:
    """In a process started with the threshold set: every (outputs, batch, method) row."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from .problems import make_spiral

    base = make_spiral()
    rows = []
    for n in [int(x) for x in cli.numbers(flags.outputs, "--outputs")]:
        ts = np.linspace(0.0, 25.0, n, dtype=np.float32)
        problem = dataclasses.replace(base, ts=ts)
        for batch in (0, flags.batch) if flags.batch else (0,):
            scales = jnp.linspace(0.5, 1.5, max(batch, 1), dtype=jnp.float32)
            for method in METHODS:
                build = _builder(method)
                if batch:

                    def fn(y0s, build=build, problem=problem):
                        solve = lambda y0: build(dataclasses.replace(problem, y0=y0), base.vf)(
                            base.params
                        )
                        return jax.vmap(solve)(y0s)

                    arg = scales[:, None] * base.y0[None, :]
                else:
                    fn = lambda y0, build=build, problem=problem: build(  # noqa: E731
                        dataclasses.replace(problem, y0=y0), base.vf
                    )(base.params)
                    arg = base.y0
                compiled = jax.jit(fn)
                hoisted = compiled.lower(arg).compile().as_text().count('xla_cpu_small_call="true"')
                jax.block_until_ready(compiled(arg))
                t0 = time.perf_counter()
                jax.block_until_ready(compiled(arg))
                calls = max(1, int(0.1 / max(time.perf_counter() - t0, 1e-6)))
                times = []
                for _ in range(flags.rounds):
                    t0 = time.perf_counter()
                    for _ in range(calls):
                        out = compiled(arg)
                    jax.block_until_ready(out)
                    times.append((time.perf_counter() - t0) / calls)
                rows.append(
                    dict(
                        outputs=n,
                        batch=batch,
                        method=method,
                        ms=1e3 * float(np.median(times)),
                        hoisted=hoisted,
                    )
                )
    return rows


def _run_worker(flags: Flags, threshold: int | None) -> list[dict]:
    env = dict(os.environ)
    if threshold is not None:
        extra = f"--xla_backend_extra_options=xla_cpu_small_while_loop_byte_threshold={threshold}"
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " " + extra).strip()
    args = [sys.executable, "-m", "benchmarks.small_system", "--worker", str(threshold or 0)]
    args += ["--outputs", *flags.outputs, "--batch", str(flags.batch)]
    args += ["--rounds", str(flags.rounds)]
    done = subprocess.run(args, env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def table(results: dict[str, list[dict]]) -> str:
    """Markdown: one row per (outputs, batch, method): ms under each XLA setting, the ratio to
    jax.experimental.ode under each, and the number of one-kernel loops under each."""
    settings = list(results)
    head = ["outputs", "batch", "method"]
    head += [f"ms ({s})" for s in settings] + [f"x jeo ({s})" for s in settings]
    head += [f"loops 1k ({s})" for s in settings]
    lines = ["| " + " | ".join(head) + " |", "|---:|---:|---|" + "---:|" * (len(head) - 3)]
    keys = sorted({(r["outputs"], r["batch"]) for rows in results.values() for r in rows})
    for n, b in keys:
        got = {
            s: {r["method"]: r for r in results[s] if (r["outputs"], r["batch"]) == (n, b)}
            for s in settings
        }
        for m in METHODS:
            cells = [str(n), str(b or "-"), m]
            cells += [f"{got[s][m]['ms']:.3f}" for s in settings]
            cells += [
                f"{got[s][m]['ms'] / got[s]['jax.experimental.ode']['ms']:.2f}" for s in settings
            ]
            cells += [str(got[s][m]["hoisted"]) for s in settings]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    flags = cli.parse(Flags, argv, "small_system")
    if flags.worker >= 0:
        print(json.dumps(_measure(flags)))
        return
    cli.writable(flags.out)
    counts = cli.numbers(flags.outputs, "--outputs")
    if any(n < 2 or n != int(n) for n in counts):
        raise cli.UserError(f"--outputs: {counts}; give whole numbers >= 2 (ts[0] and t1)")
    if flags.rounds < 1 or flags.batch < 0:
        raise cli.UserError("--rounds must be >= 1 and --batch >= 0")
    results = {}
    for name, threshold in (("default", None), ("raised", RAISED)):
        print(f"measuring with XLA's {name} small-loop limit ...", flush=True)
        results[name] = _run_worker(flags, threshold)
    text = (
        "Forward solves of the spiral (case (c), float32, dopri5, rtol 1e-6): median ms per "
        "call; `x jeo`: ratio to jax.experimental.ode in the same setting; `loops 1k`: while "
        "loops compiled into one kernel; `raised`: "
        f"`xla_cpu_small_while_loop_byte_threshold={RAISED}`.\n\n" + table(results)
    )
    cli.publish(text, flags.out)


if __name__ == "__main__":
    cli.entry(main)
