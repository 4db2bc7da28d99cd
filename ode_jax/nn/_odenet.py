"""The ODE-Net image classifier of the paper's Table 1 (torchdiffeq's ``odenet_mnist.py``).

Channels-last (NHWC) throughout. A :class:`ImageClassifier` downsamples 28x28 images to
``width`` channels at 6x6 (:class:`Downsample`), runs a body (an :class:`~ode_jax.nn.ODEBlock`
of a :class:`ConvODEField`, or a tuple of :class:`ResBlock`), then GroupNorm, ReLU, average
pooling and a linear layer.
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp

from ._block import ODEBlock
from ._conv import ConcatConv2d, resolve_impl
from ._norm import GroupNorm
from ._strided import conv_nhwc

STRIDED_IMPLS = ("auto", "native", "phase")


def odenet_norm(channels: int, dtype=jnp.float32) -> GroupNorm:
    """torchdiffeq's ``norm()``: GroupNorm with min(32, channels) groups."""
    return GroupNorm(min(32, channels), channels, dtype=dtype)


def count_params(model) -> int:
    """Number of trainable (inexact array) entries of an equinox module."""
    return sum(x.size for x in jax.tree.leaves(eqx.filter(model, eqx.is_inexact_array)))


class Conv2d(eqx.Module):
    """Plain channels-last convolution with torch ``Conv2d`` initialisation (no time input).

    Shapes: ``(N, H, W, cin) -> (N, H', W', cout)``; weight HWIO.

    ``impl``: how a strided convolution's input gradient is computed. ``"native"``: as JAX
    derives it (a convolution of the dilated cotangent); ``"phase"``: one stride-1
    convolution over the stride's phases (:func:`ode_jax.nn._strided.input_gradient`), 3.4x
    faster on XLA:CPU for the ODE-Net's 4x4 stride-2 layer; ``"auto"`` (default): ``"phase"``
    on the CPU backend, ``"native"`` elsewhere. Same values either way; stride 1 is always
    native.
    """

    weight: jax.Array  # (k, k, in, out), HWIO
    bias: jax.Array | None  # (out,)
    stride: int = eqx.field(static=True)
    padding: int = eqx.field(static=True)
    impl: str = eqx.field(static=True, default="auto")

    def __init__(
        self,
        cin,
        cout,
        kernel,
        stride=1,
        padding=0,
        use_bias=True,
        *,
        key,
        dtype=jnp.float32,
        impl: str = "auto",
    ):
        if impl not in STRIDED_IMPLS:
            raise ValueError(f"Conv2d: impl={impl!r} is not one of {STRIDED_IMPLS}")
        self.impl = impl
        wkey, bkey = jax.random.split(key)
        bound = 1.0 / math.sqrt(cin * kernel**2)
        self.weight = jax.random.uniform(wkey, (kernel, kernel, cin, cout), dtype, -bound, bound)
        self.bias = jax.random.uniform(bkey, (cout,), dtype, -bound, bound) if use_bias else None
        self.stride, self.padding = stride, padding

    def __call__(self, x_NHWC):
        impl = resolve_impl(self.impl, STRIDED_IMPLS, on_cpu="phase")
        out = conv_nhwc(x_NHWC, self.weight, self.stride, self.padding, impl == "phase")
        return out if self.bias is None else out + self.bias.reshape(1, 1, 1, -1)


class Downsample(eqx.Module):
    """(N, 28, 28, channels_in) -> (N, 6, 6, width): conv3x3, [GN, ReLU, conv4x4/2] x 2."""

    convs: tuple
    norms: tuple

    def __init__(self, width: int, channels_in: int = 1, *, key, dtype=jnp.float32):
        k0, k1, k2 = jax.random.split(key, 3)
        self.convs = (
            Conv2d(channels_in, width, 3, key=k0, dtype=dtype),
            Conv2d(width, width, 4, 2, 1, key=k1, dtype=dtype),
            Conv2d(width, width, 4, 2, 1, key=k2, dtype=dtype),
        )
        self.norms = (odenet_norm(width, dtype), odenet_norm(width, dtype))

    def __call__(self, x):
        x = self.convs[0](x)
        for norm, conv in zip(self.norms, self.convs[1:]):
            x = conv(jax.nn.relu(norm(x)))
        return x


class ConvODEField(eqx.Module):
    """torchdiffeq's ODEfunc, ``f(t, x)``: GN, ReLU, ConcatConv, GN, ReLU, ConcatConv, GN.

    ``impl`` picks the :class:`~ode_jax.nn.ConcatConv2d` implementation ("auto": shifted
    matmuls on CPU, native convolutions elsewhere).
    """

    norms: tuple
    convs: tuple

    def __init__(self, width: int, *, key, impl: str = "auto", dtype=jnp.float32):
        k1, k2 = jax.random.split(key)
        self.norms = tuple(odenet_norm(width, dtype) for _ in range(3))
        self.convs = (
            ConcatConv2d(width, width, 3, 1, 1, key=k1, dtype=dtype, impl=impl),
            ConcatConv2d(width, width, 3, 1, 1, key=k2, dtype=dtype, impl=impl),
        )

    def __call__(self, t, x):
        x = self.convs[0](t, jax.nn.relu(self.norms[0](x)))
        x = self.convs[1](t, jax.nn.relu(self.norms[1](x)))
        return self.norms[2](x)


class ResBlock(eqx.Module):
    """Pre-activation residual block: x + conv(ReLU(GN(conv(ReLU(GN(x)))))), bias-free convs."""

    norms: tuple
    convs: tuple

    def __init__(self, width: int, *, key, dtype=jnp.float32):
        k1, k2 = jax.random.split(key)
        self.norms = (odenet_norm(width, dtype), odenet_norm(width, dtype))
        self.convs = (
            Conv2d(width, width, 3, 1, 1, use_bias=False, key=k1, dtype=dtype),
            Conv2d(width, width, 3, 1, 1, use_bias=False, key=k2, dtype=dtype),
        )

    def __call__(self, x):
        h = self.convs[0](jax.nn.relu(self.norms[0](x)))
        return x + self.convs[1](jax.nn.relu(self.norms[1](h)))


class ImageClassifier(eqx.Module):
    """Downsample -> body (an ODEBlock, or a tuple of ResBlocks) -> GN, ReLU, mean pool, linear.

    ``model(x_NHWC, probe)`` returns ``(logits_NK, stats)``; ``stats["nfe"]`` is the forward
    NFE of the ODE block (0 for a ResNet body).
    """

    downsample: Downsample
    body: ODEBlock | tuple
    head_norm: GroupNorm
    linear: eqx.nn.Linear

    def __call__(self, x_NHWC, probe=None, key=None):
        """``key`` given: a training solve with the ODE block's regulariser, whose penalties
        are in ``stats["penalties"]``."""
        h = self.downsample(x_NHWC)
        if isinstance(self.body, ODEBlock):
            h, stats = self.body.solve(h, probe, regularise=key is not None, key=key)
        else:
            for block in self.body:
                h = block(h)
            stats = {"nfe": jnp.zeros((), jnp.int32)}
        return self.head(h), stats

    def head(self, h_NHWC):
        """Features after the body -> logits (N, classes)."""
        h = jnp.mean(jax.nn.relu(self.head_norm(h_NHWC)), axis=(1, 2))
        return h @ self.linear.weight.T + self.linear.bias[None]
