"""Strided convolutions whose input gradient is one stride-1 convolution (fast on XLA:CPU).

The gradient of ``y = conv(x, w, stride s)`` with respect to ``x`` is, as JAX derives it, a
convolution of the output cotangent dilated by ``s`` (``lhs_dilation``). XLA:CPU has no fast
kernel for that: on the ODE-Net's downsampling convolution (4x4, stride 2, 26x26x64 -> 13x13x64,
batch 128) it takes 50 ms, against 20 ms for the forward convolution itself.

The same gradient splits by output phase. Pixel ``r = s*u + a`` of the padded input receives
``sum_m g[u - m] * w[s*m + a]`` (one term per kernel tap congruent to ``a`` mod s), a stride-1
correlation of the padded cotangent with the sub-kernel of phase ``a``. All ``s*s`` phases go
into one stride-1 convolution with ``s*s*C`` output channels, rearranged depth-to-space
(:func:`input_gradient`): 15 ms on that layer (``python -m benchmarks.downsample``).

:func:`conv_nhwc` computes the convolution natively and gives JAX a tangent map whose transpose
is that form: a ``custom_jvp`` whose tangent in ``x`` is ``jax.linear_transpose`` of
:func:`input_gradient`. Reverse mode transposes it back (the fast form); forward mode, and so
Hessian-vector products, still work, its tangent computed by the transposed (space-to-depth)
form. The weight's gradient stays XLA's own (20 ms there).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

DIMS = ("NHWC", "HWIO", "NHWC")


def _native(x, w, stride: int, padding: int):
    pad = ((padding, padding), (padding, padding))
    return lax.conv_general_dilated(x, w, (stride, stride), pad, dimension_numbers=DIMS)


def input_gradient(g, w, x_shape, stride: int, padding: int):
    """The cotangent of ``x`` of ``_native(x, w, stride, padding)`` for output cotangent ``g``
    (N, Ho, Wo, O), as one stride-1 convolution of the padded ``g`` with every phase's
    sub-kernel side by side in output channels."""
    s, p = stride, padding
    n, h, wd, c = x_shape
    kh, kw, _, o = w.shape
    bh, bw = -(-kh // s), -(-kw // s)  # taps per phase
    # wp[s*m + a, s*l + b, c, o] -> k2[bh-1-m, bw-1-l, o, (a, b, c)]
    wp = jnp.pad(w, ((0, bh * s - kh), (0, bw * s - kw), (0, 0), (0, 0)))
    w6 = wp.reshape(bh, s, bw, s, c, o)[::-1, :, ::-1]
    k2 = w6.transpose(0, 2, 5, 1, 3, 4).reshape(bh, bw, o, s * s * c)
    gp = jnp.pad(g, ((0, 0), (bh - 1, bh - 1), (bw - 1, bw - 1), (0, 0)))
    out = lax.conv_general_dilated(gp, k2, (1, 1), "VALID", dimension_numbers=DIMS)
    u, v = out.shape[1], out.shape[2]
    dxp = out.reshape(n, u, v, s, s, c).transpose(0, 1, 3, 2, 4, 5).reshape(n, u * s, v * s, c)
    hp, wpad = h + 2 * p, wd + 2 * p
    # Rows past the padded input only ever met the zero taps of wp; rows the phases do not
    # reach (past the last window) get no gradient.
    dxp = dxp[:, :hp, :wpad]
    dxp = jnp.pad(dxp, ((0, 0), (0, hp - dxp.shape[1]), (0, wpad - dxp.shape[2]), (0, 0)))
    return dxp[:, p : p + h, p : p + wd]


@functools.partial(jax.custom_jvp, nondiff_argnums=(2, 3))
def _strided(x, w, stride: int, padding: int):
    return _native(x, w, stride, padding)


@_strided.defjvp
def _strided_jvp(stride, padding, primals, tangents):
    x, w = primals
    dx, dw = tangents
    y = _native(x, w, stride, padding)
    grad_x = jax.linear_transpose(
        lambda g: input_gradient(g, w, x.shape, stride, padding),
        jax.ShapeDtypeStruct(y.shape, y.dtype),
    )
    return y, grad_x(dx)[0] + _native(x, dw, stride, padding)


def conv_nhwc(x, w, stride: int = 1, padding: int = 0, phase_grad: bool = True):
    """``lax.conv_general_dilated`` of ``x`` (N, H, W, C) with ``w`` (kh, kw, C, O), square
    ``stride`` and symmetric zero ``padding``; with ``phase_grad`` and stride > 1 its input
    gradient is :func:`input_gradient` (same values)."""
    if stride == 1 or not phase_grad:
        return _native(x, w, stride, padding)
    return _strided(x, w, stride, padding)
