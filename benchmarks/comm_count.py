"""What a batch-sharded solve communicates: collectives in the compiled HLO, in and out of loops.

    python -m benchmarks.comm_count                 # 2 forced CPU devices (set here)
    python -m benchmarks.comm_count --devices 4

Compiles, on a 1-d "data" mesh with the batch sharded and the parameters replicated (the
training harness's layout), (a) a forward ``odeint`` of the spiral experiment's MLP field,
(b) the same with ``throw=False``, (c) vmapped over the samples (per-sample step sizes), (d)
its gradient by the continuous and by the discrete adjoint, and (e) the spiral experiment's
whole jitted train step (``experiments.common.loop.make_train_step``, smoke
sizes). For each it prints the cross-device collectives of the optimised HLO
(``jax.jit(...).lower(...).compile().as_text()``): per ``while`` loop (ops in its condition
and body, not in loops nested inside; one loop iteration is one step attempt) and outside every
loop (once per call). See docs/scaling.md for what the numbers mean.
"""

from __future__ import annotations

import dataclasses
import os
import re
import sys
from collections import Counter

import tyro

COLLECTIVES = (
    "all-reduce",
    "all-gather",
    "reduce-scatter",
    "collective-permute",
    "all-to-all",
    "collective-broadcast",
)
_OP = re.compile(r"=\s*\S.*?\s(" + "|".join(COLLECTIVES) + r")(?:-start)?\(")
_CALLS = re.compile(
    r"(?:to_apply|body|condition|calls|true_computation|false_computation)=%?([\w.\-]+)"
)
_BRANCHES = re.compile(r"branch_computations=\{([^}]*)\}")


def parse_computations(text: str) -> tuple[dict[str, list[str]], str]:
    """HLO module text -> ({computation name: its instruction lines}, entry name)."""
    comps, entry, name = {}, None, None
    for line in text.splitlines():
        head = re.match(r"^(ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$", line)
        if head and not line.startswith(" "):
            name = head.group(2)
            comps[name] = []
            if head.group(1):
                entry = name
        elif line.startswith("}"):
            name = None
        elif name is not None:
            comps[name].append(line.strip())
    return comps, entry


def _callees(line: str) -> list[str]:
    names = _CALLS.findall(line)
    for group in _BRANCHES.findall(line):
        names += [n.strip().lstrip("%") for n in group.split(",")]
    return names


def collectives(text: str) -> dict[str, dict]:
    """The collective ops of an optimised HLO module, by where they run.

    Returns ``{place: {"parent": place or None, "ops": [(kind, result shape), ...]}}`` with
    the place ``"outside loops"`` (ops run once per call) and one ``"while NAME"`` per loop
    (ops in its condition and body, reached through fusions, calls and conditionals, but not
    those inside loops nested in it: each loop iteration runs its ops once).
    """
    comps, entry = parse_computations(text)
    places = {"outside loops": {"parent": None, "ops": []}}

    def visit(comp: str, place: str, seen: set):
        if comp in seen or comp not in comps:
            return
        seen.add(comp)
        for line in comps[comp]:
            op = _OP.search(line)
            if op:
                shape = line.split("=", 1)[1].split(op.group(1), 1)[0].strip()
                places[place]["ops"].append((op.group(1), shape))
            if re.search(r"\swhile\(", line):
                name = line.split("=", 1)[0].replace("ROOT", "").strip().lstrip("%")
                loop = f"while {name}"
                places[loop] = {"parent": place, "ops": []}
                for callee in _callees(line):
                    visit(callee, loop, set())
            else:
                for callee in _callees(line):
                    visit(callee, place, seen)

    visit(entry, "outside loops", set())
    return places


def _format(name: str, places: dict, shapes: bool) -> str:
    rows = [name]

    def depth(place):
        parent = places[place]["parent"]
        return 0 if parent is None else 1 + depth(parent)

    for place, info in places.items():
        counts = Counter(kind for kind, _ in info["ops"])
        ops = ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "none"
        rows.append(f"  {'  ' * depth(place)}{place:<{34 - 2 * depth(place)}} {ops}")
        if shapes:
            for kind, shape in info["ops"]:
                rows.append(f"  {'  ' * depth(place)}    {kind}: {shape}")
    return "\n".join(rows)


def measure(num_devices: int) -> dict[str, dict]:
    import equinox as eqx
    import jax
    import jax.numpy as jnp

    import ode_jax
    from configs.spiral import SMOKE, SpiralConfig
    from experiments import spiral
    from experiments.common import parallel
    from experiments.common.loop import make_train_step, optimizer_for
    from ode_jax.nn import call_field

    if len(jax.devices()) < num_devices:
        raise SystemExit(f"need {num_devices} devices, have {jax.devices()}")
    mesh = parallel.make_mesh(num_devices)
    cfg = SpiralConfig(smoke=True, **dict(SMOKE, batch_size=8 * num_devices))
    task = spiral.build(cfg)
    model = parallel.replicate(task.init_model(jax.random.key(0)), mesh)
    batch = parallel.shard_batch(task.get_batch(jax.random.key(1)), mesh)
    ts = spiral.times(cfg)[: cfg.batch_time]
    settings = cfg.solve_settings()

    def forward(throw):
        def run(model, y0):
            return settings.odeint(call_field, y0, ts, model, throw=throw).ys

        return eqx.filter_jit(run)

    def per_sample(model, y0):  # vmap: every sample its own step sizes
        return jax.vmap(lambda y: settings.odeint(call_field, y, ts, model).ys)(y0)

    def gradient(adjoint):
        def grad(model, y0):
            def loss(model):
                sol = settings.odeint(call_field, y0, ts, model, adjoint=adjoint)
                return jnp.mean(sol.ys**2)

            return eqx.filter_grad(loss)(model)

        return eqx.filter_jit(grad)

    optimizer = optimizer_for(cfg)
    opt_state = parallel.replicate(optimizer.init(eqx.filter(model, eqx.is_inexact_array)), mesh)
    step = make_train_step(task.loss, optimizer, mesh, tuple(task.backward_stats))
    key = jax.random.key(2)
    programs = {
        "forward odeint (throw=True)": (forward(True), (model, batch["y0"])),
        "forward odeint (throw=False)": (forward(False), (model, batch["y0"])),
        "forward odeint, vmapped per sample": (eqx.filter_jit(per_sample), (model, batch["y0"])),
        "gradient (continuous adjoint)": (gradient("continuous"), (model, batch["y0"])),
        "gradient (discrete adjoint)": (gradient("discrete"), (model, batch["y0"])),
        "spiral train step": (step, (model, opt_state, batch, key)),
    }
    del ode_jax
    return {name: collectives(_compiled_text(fn, args)) for name, (fn, args) in programs.items()}


def _compiled_text(fn, args) -> str:
    compiled = fn.lower(*args).compile()
    return getattr(compiled, "compiled", compiled).as_text()  # eqx.filter_jit wraps jax's


@dataclasses.dataclass(frozen=True)
class Args:
    """What a batch-sharded solve communicates: collectives in the compiled HLO, by loop."""

    devices: int = 2  # forced CPU devices (set before JAX starts)
    shapes: bool = False  # list every op's result shape


def parse_args(argv=None) -> Args:
    """The flags, checked. Mistakes exit with one ``error:`` line here rather than through
    ``experiments.common.cli.entry``: importing that package starts JAX, and the device count
    has to be set before JAX starts."""
    args = tyro.cli(Args, args=argv, prog="python -m benchmarks.comm_count")
    if args.devices < 1:
        raise SystemExit(f"error: --devices must be >= 1, got {args.devices}")
    if "jax" in sys.modules:
        raise SystemExit("error: run as a fresh process: the device count is set before JAX starts")
    return args


def main(argv=None):
    args = parse_args(argv)
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={args.devices}"
    )
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    results = measure(args.devices)
    print(f"collectives in the optimised HLO, batch sharded over {args.devices} CPU devices")
    for name, places in results.items():
        print(_format(name, places, args.shapes))


if __name__ == "__main__":
    main()
