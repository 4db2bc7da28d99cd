"""ConcatConv2d: a channels-last 2-d convolution that sees time as an extra input channel.

The layer of torchdiffeq's ODE-Net (``odenet_mnist.py``): ``conv(concat([t * ones, x]))``. Two
implementations compute the same function:

* ``"matmul"``: the convolution as matmuls over the ``kw`` column shifts of the padded input
  side by side in channels, ``cols = concat_j xp[:, :, j:j+s*Wo:s]``. With stride 1, one
  matmul of every padded row with every kernel row, ``z = cols @ concat_i w[i]`` (``kh * out``
  channels), whose kernel-row blocks are summed shifted down by ``i`` rows; with stride s > 1,
  ``sum_i cols[:, i:i+s*Ho:s] @ w[i].reshape(kw * C, out)`` (the row-shifted form would
  multiply s times as many rows). XLA:CPU runs the
  gradient of a native convolution inside a ``while_loop`` (every adjoint's backward pass) an
  order of magnitude slower than this; see DESIGN.md's performance notes and ``benchmarks/``.
  Measured on one core (batch 128, 6x6x64, two 3x3 convolutions, inside a ``fori_loop``):
  the VJP takes 70 ms against 150 ms for ``kh * kw`` shifted matmuls (each shift's
  transpose pads the whole input again), the forward 19.5 against 16 ms.
* ``"native"``: ``lax.conv_general_dilated`` in NHWC/HWIO, the fast path on GPU/TPU.

``impl="auto"`` picks ``"matmul"`` on the CPU backend and ``"native"`` elsewhere.

Both skip materialising the time channel: it is the constant ``t`` inside the image and zero in
the padding, so its contribution is ``t * conv(ones, w[:, :, :1])``, a fixed (Ho, Wo, out) map
that costs nothing per batch element.
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ._broadcast import lift

IMPLS = ("auto", "matmul", "native")


def _out_size(n: int, k: int, stride: int, padding: int) -> int:
    return (n + 2 * padding - k) // stride + 1


def _conv_matmul(x_NHWC, w_HWIO, stride: int, padding: int):
    """Convolution as matmuls over the zero-padded input's ``kw`` column shifts, concatenated
    along channels (see the module docstring): one matmul for all ``kh`` kernel rows when the
    stride is 1, else one per kernel row."""
    kh, kw, c, o = w_HWIO.shape
    n, h, w, _ = x_NHWC.shape
    ho, wo = _out_size(h, kh, stride, padding), _out_size(w, kw, stride, padding)
    p = padding
    xp = jnp.pad(x_NHWC, ((0, 0), (p, p), (p, p), (0, 0))) if p else x_NHWC
    hp = xp.shape[1]
    cols = jnp.concatenate(
        [
            lax.slice(xp, (0, 0, j, 0), (n, hp, j + stride * (wo - 1) + 1, c), (1, 1, stride, 1))
            for j in range(kw)
        ],
        axis=-1,
    )  # (n, hp, wo, kw * c)
    if stride == 1:
        # Every padded row times every kernel row, (n*hp*wo, kw*c) @ (kw*c, kh*o), then row i
        # of the kernel contributes its block shifted down by i rows. The VJP keeps `cols`
        # alone (no row-shifted copies of it) and runs two matmuls; on (b)'s field inside a
        # loop: VJP 12.05 -> 10.28 ms, intermediates 27 -> 17 states, for hp/ho (here 8/6)
        # times the multiplications.
        w_rows = jnp.concatenate([w_HWIO[i].reshape(kw * c, o) for i in range(kh)], axis=-1)
        z = (cols.reshape(-1, kw * c) @ w_rows).reshape(n, hp, wo, kh * o)
        terms = [lax.slice(z, (0, i, 0, i * o), (n, i + ho, wo, (i + 1) * o)) for i in range(kh)]
        return sum(terms[1:], terms[0])
    out = None
    for i in range(kh):
        rows = lax.slice(
            cols, (0, i, 0, 0), (n, i + stride * (ho - 1) + 1, wo, kw * c), (1, stride, 1, 1)
        )
        # As a 2-d matmul: the weight gradient is then one (kw*c, n*ho*wo) x (n*ho*wo, out)
        # product; from the 4-d form XLA:CPU builds it about 1.5x slower (the VJP of two 3x3
        # convolutions inside a loop: 18.6 -> 12.8 ms on (b)'s shape).
        term = rows.reshape(-1, kw * c) @ w_HWIO[i].reshape(kw * c, -1)
        out = term if out is None else out + term
    return out.reshape(n, ho, wo, -1)


def _conv_native(x_NHWC, w_HWIO, stride: int, padding: int):
    return lax.conv_general_dilated(
        x_NHWC,
        w_HWIO,
        window_strides=(stride, stride),
        padding=((padding, padding), (padding, padding)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )


def _time_map(w_t_HWO, h: int, w: int, stride: int, padding: int):
    """conv(ones(H, W), w_t) with zero padding: the (Ho, Wo, out) response to a unit time channel.

    Built from a constant 0/1 mask so that the only traced input is the time slice of the weight.
    """
    kh, kw, _ = w_t_HWO.shape
    ho, wo = _out_size(h, kh, stride, padding), _out_size(w, kw, stride, padding)
    mask = np.zeros((h + 2 * padding, w + 2 * padding), np.float32)
    mask[padding : padding + h, padding : padding + w] = 1.0
    # taps[y, x, i*kw + j] = mask value seen by kernel tap (i, j) at output position (y, x).
    taps = np.stack(
        [
            mask[i : i + stride * (ho - 1) + 1 : stride, j : j + stride * (wo - 1) + 1 : stride]
            for i in range(kh)
            for j in range(kw)
        ],
        axis=-1,
    )
    taps = jnp.asarray(taps, w_t_HWO.dtype)
    return taps @ w_t_HWO.reshape(kh * kw, -1)


def resolve_impl(impl: str, impls: tuple = IMPLS, on_cpu: str = "matmul") -> str:
    """``"auto"`` -> ``on_cpu`` on the CPU backend, ``"native"`` on any other (``impls``: the
    layer's choices)."""
    if impl not in impls:
        raise ValueError(f"impl={impl!r} is not one of {impls}")
    if impl == "auto":
        return on_cpu if jax.default_backend() == "cpu" else "native"
    return impl


class ConcatConv2d(eqx.Module):
    """2-d convolution of ``concat([t, x])`` over channels, channels-last (NHWC).

    The time channel comes first, as in torchdiffeq, so a torch ``Conv2d`` weight ``W`` (O, I, kh,
    kw) maps to ``weight = W.permute(2, 3, 1, 0)``.

    Args:
        in_channels: channels of ``x`` (the time channel is added on top).
        out_channels: output channels.
        kernel_size: square kernel size.
        stride: stride in both spatial dimensions.
        padding: symmetric zero padding in both spatial dimensions.
        use_bias: add a learned bias.
        key: PRNG key. Initialisation matches torch's ``Conv2d`` default:
            U(-1/sqrt(fan_in), 1/sqrt(fan_in)) with fan_in = (in_channels + 1) * kernel_size**2.
        impl: "auto" (matmul on CPU, native elsewhere), "matmul" or "native".

    Call as ``conv(t, x)`` with ``x`` of shape (N, H, W, C) or (H, W, C) and scalar ``t``; returns
    (N, Ho, Wo, out_channels) (or without N), Ho = (H + 2 * padding - kernel_size) // stride + 1.
    """

    weight: jax.Array  # (kernel_size, kernel_size, in_channels + 1, out_channels), HWIO
    bias: jax.Array | None  # (out_channels,)
    in_channels: int = eqx.field(static=True)
    out_channels: int = eqx.field(static=True)
    kernel_size: int = eqx.field(static=True)
    stride: int = eqx.field(static=True)
    padding: int = eqx.field(static=True)
    impl: str = eqx.field(static=True)

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        padding: int = 1,
        use_bias: bool = True,
        *,
        key: jax.Array,
        impl: str = "auto",
        dtype=None,
    ):
        for name, value, low in (
            ("in_channels", in_channels, 1),
            ("out_channels", out_channels, 1),
            ("kernel_size", kernel_size, 1),
            ("stride", stride, 1),
            ("padding", padding, 0),
        ):
            if not isinstance(value, (int, np.integer)) or value < low:
                raise ValueError(f"ConcatConv2d: {name} must be an int >= {low}, got {value!r}")
        if impl not in IMPLS:
            raise ValueError(f"ConcatConv2d: impl={impl!r} is not one of {IMPLS}")
        dtype = dtype or jnp.result_type(float)
        wkey, bkey = jax.random.split(key)
        fan_in = (in_channels + 1) * kernel_size**2
        bound = 1.0 / math.sqrt(fan_in)
        shape = (kernel_size, kernel_size, in_channels + 1, out_channels)
        self.weight = jax.random.uniform(wkey, shape, dtype, -bound, bound)
        self.bias = (
            jax.random.uniform(bkey, (out_channels,), dtype, -bound, bound) if use_bias else None
        )
        self.in_channels = int(in_channels)
        self.out_channels = int(out_channels)
        self.kernel_size = int(kernel_size)
        self.stride = int(stride)
        self.padding = int(padding)
        self.impl = impl

    def __call__(self, t, x: jax.Array) -> jax.Array:
        unbatched = x.ndim == 3
        if unbatched:
            x = x[None]
        if x.ndim != 4 or x.shape[-1] != self.in_channels:
            raise ValueError(
                f"ConcatConv2d expects x of shape (N, H, W, {self.in_channels}) or "
                f"(H, W, {self.in_channels}) (channels-last), got {x.shape}"
            )
        impl = resolve_impl(self.impl)
        conv = _conv_matmul if impl == "matmul" else _conv_native
        w = self.weight.astype(x.dtype)
        out = conv(x, w[:, :, 1:], self.stride, self.padding)
        h, wd = x.shape[1:3]
        t = jnp.asarray(t, x.dtype)
        out = out + t * _time_map(w[:, :, 0], h, wd, self.stride, self.padding)[None]
        if self.bias is not None:
            out = out + lift(self.bias.astype(x.dtype), out.ndim)
        return out[0] if unbatched else out
