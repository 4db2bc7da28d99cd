"""(d)'s layers outside the ODE block: the ODE-Net's downsampling stack, JAX against torch.

    python -m benchmarks.downsample --out benchmarks/downsample.md

The training step (d) runs conv3x3 1->C, [GroupNorm, ReLU, conv4x4/2] x 2 before the ODE
block, the same in every JAX method (``experiments.odenet``'s ``Downsample``: XLA's native
convolutions, outside any loop; on the CPU the strided ones' input gradient as one stride-1
convolution over the stride's phases, ``Conv2d(impl="phase")``, also timed as
``impl="native"``) and in torch (its NCHW copy with the same weights, from
:func:`benchmarks.train_step.make_torch_model`). This times that stack alone on (d)'s batch:
its forward, and its forward with the gradient of sum(out**2) with respect to its parameters
(the input is data: no input gradient), and the first strided layer's forward and input and
weight gradients alone, as medians of interleaved rounds.
"""

from __future__ import annotations

import copy
import dataclasses
import os

import equinox as eqx
import jax
import jax.numpy as jnp

from . import cli
from .measure import interleaved_medians
from .methods import torch_available
from .problems import _t
from .train_step import Setup, make_data, make_jax_model, make_torch_model


@dataclasses.dataclass(frozen=True)
class Flags:
    quick: bool = False
    """batch 8, width 16 (a smoke test of the script, not a measurement)"""
    rounds: int = 7
    """interleaved rounds; medians are reported"""
    out: str = ""
    """write the markdown table here too ('' = print only)"""


def _with_impl(conv, impl: str):
    """A copy of a ``Conv2d`` with another ``impl`` (a static field: not a pytree leaf)."""
    conv = copy.copy(conv)
    object.__setattr__(conv, "impl", impl)
    return conv


def jax_calls(model, setup: Setup, impl: str = "auto") -> dict:
    """name -> zero-argument function running ``model``'s JAX stack once (blocking), its
    convolutions with ``Conv2d`` ``impl`` (how a strided one's input gradient is computed)."""
    down = model.downsample
    down = eqx.tree_at(lambda d: d.convs, down, tuple(_with_impl(c, impl) for c in down.convs))
    x, _ = make_data(setup)
    params, static = eqx.partition(down, eqx.is_array)

    def out(p):
        return eqx.combine(p, static)(x)

    fwd = jax.jit(out)
    grad = jax.jit(jax.grad(lambda p: jnp.sum(out(p) ** 2)))
    tag = "" if impl == "auto" else f" (Conv2d impl={impl})"
    return {
        f"JAX forward{tag}": lambda: jax.block_until_ready(fwd(params)),
        f"JAX forward + gradient{tag}": lambda: jax.block_until_ready(grad(params)),
    }


def layer_calls(model, setup: Setup) -> dict:
    """The stack's first strided layer (conv4x4/2 on the 26x26 map) alone: its forward, its
    input gradient with each ``impl`` and its weight gradient (XLA's own either way), each
    a ``jax.vjp`` pulled back for one cotangent (the unused forward is dead code)."""
    conv = model.downsample.convs[1]
    dtype = conv.weight.dtype
    x = jax.random.normal(jax.random.key(0), (setup.batch, 26, 26, conv.weight.shape[2]), dtype)
    g = jax.random.normal(jax.random.key(1), jax.eval_shape(conv, x).shape, dtype)
    name = f"conv{conv.weight.shape[0]}x{conv.weight.shape[1]}/{conv.stride} on 26x26"

    def input_grad(impl):
        layer = _with_impl(conv, impl)
        return jax.jit(lambda x, g: jax.vjp(layer, x)[1](g)[0])

    w_grad = jax.jit(lambda c, g: jax.vjp(lambda c: c(x), c)[1](g)[0].weight)
    fns = {
        f"{name}: forward": (jax.jit(lambda c, x: c(x)), conv, x),
        f"{name}: input gradient (impl=phase)": (input_grad("phase"), x, g),
        f"{name}: input gradient (impl=native)": (input_grad("native"), x, g),
        f"{name}: weight gradient": (w_grad, conv, g),
    }
    return {k: (lambda f=f, a=a: jax.block_until_ready(f(*a))) for k, (f, *a) in fns.items()}


def torch_calls(model, setup: Setup) -> dict:
    """The same for torch's copy of the stack (NCHW, same weights)."""
    import torch

    down = make_torch_model(model, setup).downsample
    x = _t(make_data(setup)[0]).permute(0, 3, 1, 2).contiguous()

    def forward():
        with torch.no_grad():
            down(x)

    def gradient():
        down.zero_grad()
        torch.sum(down(x) ** 2).backward()

    return {"torch forward": forward, "torch forward + gradient": gradient}


def main(argv=None) -> str:
    flags = cli.parse(Flags, argv, "downsample")
    cli.writable(flags.out)
    setup = Setup.make(flags.quick)
    model = make_jax_model(setup)
    calls = {
        **jax_calls(model, setup),
        **jax_calls(model, setup, impl="native"),
        **layer_calls(model, setup),
    }
    threads = "-"
    if torch_available():
        import torch

        threads = os.cpu_count() or 1  # as (d) on this machine
        torch.set_num_threads(threads)
        calls.update(torch_calls(model, setup))
    ms = {name: 1e3 * s for name, s in interleaved_medians(calls, flags.rounds).items()}
    lines = ["| what | ms |", "|---|---:|"] + [f"| {k} | {v:.1f} |" for k, v in ms.items()]
    text = (
        f"(d)'s downsampling stack alone: batch {setup.batch}, 28x28x1 -> 6x6x{setup.width}, "
        f"float32, JAX backend {jax.default_backend()}, torch threads {threads}; medians of "
        f"{flags.rounds} interleaved rounds.\n\n" + "\n".join(lines) + "\n"
    )
    return cli.publish(text, flags.out)


if __name__ == "__main__":
    cli.entry(main)
