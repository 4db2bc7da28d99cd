"""The benchmark problems, each as a JAX vector field and (lazily) the same field in torch.

Every problem is float32, solved with dopri5, and shares its weights between JAX and torch (the
torch modules are built from the JAX arrays), so every library integrates the same function.

* ``mlp``: y' = W3 tanh(W2 tanh(W1 y + b1) + b2) + b3, batch 256, state 32, hidden 64,
  t in [0, 10], rtol 1e-6, atol 1e-8; loss = mean(y(10)**2).
* ``odenet``: torchdiffeq's odenet_mnist ODEfunc (norm1-relu-conv1-norm2-relu-conv2-norm3,
  GroupNorm(32, 64), 3x3 ConcatConv2d) on a (128, 6, 6, 64) channels-last state, t in [0, 1],
  rtol = atol = 1e-3; loss = mean(y(1)**2). Gradients w.r.t. all ODEfunc parameters (the conv
  weights and biases and the norms' affine parameters, as torch's parameters()).
* ``spiral``: y' = (y**3) @ A, A = [[-0.1, 2], [-2, -0.1]], y0 = [2, 0], 1000 output times on
  [0, 25], rtol 1e-6, atol 1e-8; loss = mean(ys**2) over all outputs; gradient w.r.t. A.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ode_jax.nn._conv import ConcatConv2d

F32 = jnp.float32


@dataclasses.dataclass(frozen=True)
class Problem:
    name: str
    title: str
    vf: Callable  # (t, y, params) -> dy/dt
    params: Any  # pytree of float32 arrays; gradients are taken w.r.t. it
    y0: jax.Array
    ts: np.ndarray  # numpy: ode_jax.odeint needs concrete ts under jit (see README of benchmarks)
    loss: Callable  # ys with leading axis len(ts) -> scalar
    rtol: float
    atol: float
    make_torch: Callable  # () -> (torch module f(t, y), y0, ts, loss); imports torch lazily


def _uniform(key, shape, fan_in):
    bound = 1.0 / math.sqrt(fan_in)
    return jax.random.uniform(key, shape, F32, -bound, bound)


def _torch():
    import torch

    return torch


def _t(x):
    torch = _torch()
    return torch.from_numpy(np.array(x, dtype=np.float32))


# ---------------------------------------------------------------------------------------------
# (a) MLP neural ODE.


def mlp_vf(t, y, p):
    h = jnp.tanh(y @ p["w1"] + p["b1"])
    h = jnp.tanh(h @ p["w2"] + p["b2"])
    return h @ p["w3"] + p["b3"]


def make_mlp(quick: bool = False) -> Problem:
    batch, dim, hidden = (32, 8, 16) if quick else (256, 32, 64)
    ks = jax.random.split(jax.random.key(0), 7)
    p = {
        "w1": _uniform(ks[0], (dim, hidden), dim),
        "b1": _uniform(ks[1], (hidden,), dim),
        "w2": _uniform(ks[2], (hidden, hidden), hidden),
        "b2": _uniform(ks[3], (hidden,), hidden),
        "w3": _uniform(ks[4], (hidden, dim), hidden),
        "b3": _uniform(ks[5], (dim,), hidden),
    }
    y0 = jax.random.normal(ks[6], (batch, dim), F32)
    ts = np.array([0.0, 10.0], np.float32)

    def make_torch():
        torch = _torch()

        class MLP(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.l1 = torch.nn.Linear(dim, hidden)
                self.l2 = torch.nn.Linear(hidden, hidden)
                self.l3 = torch.nn.Linear(hidden, dim)
                with torch.no_grad():
                    for i, layer in enumerate((self.l1, self.l2, self.l3), 1):
                        layer.weight.copy_(_t(p[f"w{i}"]).T)
                        layer.bias.copy_(_t(p[f"b{i}"]))
                self.nfe = 0

            def forward(self, t, y):
                self.nfe += 1
                return self.l3(torch.tanh(self.l2(torch.tanh(self.l1(y)))))

        return MLP(), _t(y0), _t(ts), lambda ys: torch.mean(ys[-1] ** 2)

    return Problem(
        name="mlp",
        title=f"(a) MLP neural ODE: batch {batch}, state {dim}, 2x tanh {hidden}, t in [0, 10], "
        "dopri5, rtol 1e-6, atol 1e-8",
        vf=mlp_vf,
        params=p,
        y0=y0,
        ts=ts,
        loss=lambda ys: jnp.mean(ys[-1] ** 2),
        rtol=1e-6,
        atol=1e-8,
        make_torch=make_torch,
    )


# ---------------------------------------------------------------------------------------------
# (b) ODE-Net block.


class GroupNormNHWC(eqx.Module):
    """GroupNorm over a channels-last (N, H, W, C) batch, as torch.nn.GroupNorm (eps 1e-5)."""

    scale: jax.Array
    bias: jax.Array
    groups: int = eqx.field(static=True)

    def __init__(self, groups, channels):
        self.scale = jnp.ones((channels,), F32)
        self.bias = jnp.zeros((channels,), F32)
        self.groups = groups

    def __call__(self, x):
        n, h, w, c = x.shape
        xg = x.reshape(n, h, w, self.groups, c // self.groups)
        mean = jnp.mean(xg, axis=(1, 2, 4), keepdims=True)
        var = jnp.mean(jnp.square(xg - mean), axis=(1, 2, 4), keepdims=True)
        xg = (xg - mean) * jax.lax.rsqrt(var + 1e-5)
        return xg.reshape(n, h, w, c) * self.scale + self.bias


class ODEFunc(eqx.Module):
    """torchdiffeq's odenet_mnist ODEfunc, channels-last."""

    norm1: GroupNormNHWC
    conv1: ConcatConv2d
    norm2: GroupNormNHWC
    conv2: ConcatConv2d
    norm3: GroupNormNHWC

    def __init__(self, dim, *, key, impl="matmul"):
        k1, k2 = jax.random.split(key)
        groups = min(32, dim)
        self.norm1 = GroupNormNHWC(groups, dim)
        self.conv1 = ConcatConv2d(dim, dim, 3, 1, 1, key=k1, impl=impl, dtype=F32)
        self.norm2 = GroupNormNHWC(groups, dim)
        self.conv2 = ConcatConv2d(dim, dim, 3, 1, 1, key=k2, impl=impl, dtype=F32)
        self.norm3 = GroupNormNHWC(groups, dim)

    def __call__(self, t, x):
        out = self.conv1(t, jax.nn.relu(self.norm1(x)))
        out = self.conv2(t, jax.nn.relu(self.norm2(out)))
        return self.norm3(out)


def odenet_vf(t, y, func):
    return func(t, y)


def make_odenet(quick: bool = False) -> Problem:
    batch, size, dim = (8, 6, 16) if quick else (128, 6, 64)
    kf, ky = jax.random.split(jax.random.key(1))
    func = ODEFunc(dim, key=kf)
    y0 = jax.random.normal(ky, (batch, size, size, dim), F32)
    ts = np.array([0.0, 1.0], np.float32)

    def make_torch():
        torch = _torch()
        nn = torch.nn

        class TorchConcatConv2d(nn.Module):
            def __init__(self, conv: ConcatConv2d):
                super().__init__()
                self._layer = nn.Conv2d(dim + 1, dim, 3, 1, 1)
                with torch.no_grad():
                    self._layer.weight.copy_(_t(conv.weight).permute(3, 2, 0, 1))
                    self._layer.bias.copy_(_t(conv.bias))

            def forward(self, t, x):
                tt = torch.ones_like(x[:, :1, :, :]) * t
                return self._layer(torch.cat([tt, x], 1))

        class TorchODEfunc(nn.Module):
            def __init__(self):
                super().__init__()
                groups = min(32, dim)
                self.norm1 = nn.GroupNorm(groups, dim)
                self.relu = nn.ReLU(inplace=True)
                self.conv1 = TorchConcatConv2d(func.conv1)
                self.norm2 = nn.GroupNorm(groups, dim)
                self.conv2 = TorchConcatConv2d(func.conv2)
                self.norm3 = nn.GroupNorm(groups, dim)
                self.nfe = 0

            def forward(self, t, x):
                self.nfe += 1
                out = self.relu(self.norm1(x))
                out = self.conv1(t, out)
                out = self.relu(self.norm2(out))
                out = self.conv2(t, out)
                return self.norm3(out)

        y0_t = _t(y0).permute(0, 3, 1, 2).contiguous()  # torch's ODE-Net is NCHW
        return TorchODEfunc(), y0_t, _t(ts), lambda ys: torch.mean(ys[-1] ** 2)

    return Problem(
        name="odenet",
        title=f"(b) ODE-Net block: batch {batch}, {size}x{size}x{dim} NHWC, 2x ConcatConv2d 3x3 + "
        "GroupNorm, t in [0, 1], dopri5, rtol = atol = 1e-3",
        vf=odenet_vf,
        params=func,
        y0=y0,
        ts=ts,
        loss=lambda ys: jnp.mean(ys[-1] ** 2),
        rtol=1e-3,
        atol=1e-3,
        make_torch=make_torch,
    )


# ---------------------------------------------------------------------------------------------
# (c) Long small problem: the cubic spiral.


def spiral_vf(t, y, a):
    return (y**3) @ a


def make_spiral(quick: bool = False) -> Problem:
    n_out = 200 if quick else 1000
    a = jnp.array([[-0.1, 2.0], [-2.0, -0.1]], F32)
    y0 = jnp.array([2.0, 0.0], F32)
    ts = np.linspace(0.0, 25.0, n_out, dtype=np.float32)

    def make_torch():
        torch = _torch()

        class Spiral(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.a = torch.nn.Parameter(_t(a))
                self.nfe = 0

            def forward(self, t, y):
                self.nfe += 1
                return (y**3) @ self.a

        return Spiral(), _t(y0), _t(ts), lambda ys: torch.mean(ys**2)

    return Problem(
        name="spiral",
        title=f"(c) spiral y' = (y**3) @ A, y0 = [2, 0], {n_out} outputs on [0, 25], dopri5, "
        "rtol 1e-6, atol 1e-8",
        vf=spiral_vf,
        params=a,
        y0=y0,
        ts=ts,
        loss=lambda ys: jnp.mean(ys**2),
        rtol=1e-6,
        atol=1e-8,
        make_torch=make_torch,
    )


PROBLEMS = {"mlp": make_mlp, "odenet": make_odenet, "spiral": make_spiral}
