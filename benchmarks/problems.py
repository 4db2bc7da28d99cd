"""The benchmark problems, each as a JAX vector field and (lazily) the same field in torch.

Every problem is float32, solved with dopri5, and shares its weights between JAX and torch (the
torch modules are built from the JAX arrays), so every library integrates the same function.

* ``mlp``: y' = W3 tanh(W2 tanh(W1 y + b1) + b2) + b3, batch 256, state 32, hidden 64,
  t in [0, 10], rtol 1e-6, atol 1e-8; loss = mean(y(10)**2).
* ``odenet``: torchdiffeq's odenet_mnist ODEfunc (norm1-relu-conv1-norm2-relu-conv2-norm3,
  ``ode_jax.nn.GroupNorm(32, 64)``, 3x3 ``ode_jax.nn.ConcatConv2d``: the library's own modules,
  as the ODE-Net experiment uses them) on a (128, 6, 6, 64) channels-last state, t in [0, 1],
  rtol = atol = 1e-3; loss = mean(y(1)**2). Gradients w.r.t. all ODEfunc parameters (the conv
  weights and biases and the norms' affine parameters, as torch's parameters()).
* ``mlp_eqx``: (a) written as users write it, an ``eqx.nn.MLP`` vmapped over the batch.
* ``odenet_plain``: (b) as users write it: a hand-written GroupNorm (``GroupNormNHWC``, one
  reduction over the grouped view) without affine parameters, convolutions without biases,
  loss sum(y(1)**2) / batch (a larger adjoint: the backward error control matters).
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

from ode_jax.nn import GroupNorm
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
    """float32 torch tensor on torch's default device (the GPU when benchmarks.run picked it)."""
    torch = _torch()
    return torch.as_tensor(np.array(x, dtype=np.float32), device=torch.get_default_device())


def torch_sync():
    """Wait for torch's queued GPU work (timings of a CUDA call end here); no-op on the CPU."""
    torch = _torch()
    if torch.get_default_device().type == "cuda":
        torch.cuda.synchronize()


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


def make_mlp_eqx(quick: bool = False) -> Problem:
    """(a2): (a) written as users write it: an ``eqx.nn.MLP`` for one state, ``jax.vmap``-ed
    over the batch, its arrays as the parameters (``eqx.partition``)."""
    batch, dim, hidden = (32, 8, 16) if quick else (256, 32, 64)
    km, ky = jax.random.split(jax.random.key(2))
    mlp = eqx.nn.MLP(dim, dim, hidden, 2, activation=jnp.tanh, key=km, dtype=F32)
    params, static = eqx.partition(mlp, eqx.is_array)
    y0 = jax.random.normal(ky, (batch, dim), F32)
    ts = np.array([0.0, 10.0], np.float32)

    def vf(t, y, p):
        return jax.vmap(eqx.combine(p, static))(y)

    def make_torch():
        torch = _torch()
        layers = []
        for i, lin in enumerate(mlp.layers):
            layer = torch.nn.Linear(lin.in_features, lin.out_features)
            with torch.no_grad():
                layer.weight.copy_(_t(lin.weight))
                layer.bias.copy_(_t(lin.bias))
            layers.append(layer)
            if i < len(mlp.layers) - 1:
                layers.append(torch.nn.Tanh())

        class Field(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.net = torch.nn.Sequential(*layers)
                self.nfe = 0

            def forward(self, t, y):
                self.nfe += 1
                return self.net(y)

        return Field(), _t(y0), _t(ts), lambda ys: torch.mean(ys[-1] ** 2)

    # (a)'s times, loss and tolerances; its own field, weights and initial state.
    return dataclasses.replace(
        make_mlp(quick),
        name="mlp_eqx",
        title=f"(a2) (a) as users write it: eqx.nn.MLP (2x tanh {hidden}) vmapped over batch "
        f"{batch}, state {dim}, t in [0, 10], dopri5, rtol 1e-6, atol 1e-8",
        vf=vf,
        params=params,
        y0=y0,
        make_torch=make_torch,
    )


# ---------------------------------------------------------------------------------------------
# (b) ODE-Net block.


class GroupNormNHWC(eqx.Module):
    """GroupNorm over a channels-last (N, H, W, C) batch without affine parameters, as
    torch.nn.GroupNorm(affine=False) (eps 1e-5), written the direct way: one mean and one
    variance over the (N, H, W, groups, C / groups) view."""

    groups: int = eqx.field(static=True)

    def __call__(self, x):
        n, h, w, c = x.shape
        xg = x.reshape(n, h, w, self.groups, c // self.groups)
        mean = jnp.mean(xg, axis=(1, 2, 4), keepdims=True)
        var = jnp.mean(jnp.square(xg - mean), axis=(1, 2, 4), keepdims=True)
        return ((xg - mean) * jax.lax.rsqrt(var + 1e-5)).reshape(n, h, w, c)


class ODEFunc(eqx.Module):
    """torchdiffeq's odenet_mnist ODEfunc, channels-last. ``plain``: as users often write it,
    with the hand-written :class:`GroupNormNHWC` without affine parameters and convolutions
    without biases; otherwise with ``ode_jax.nn.GroupNorm``."""

    norm1: eqx.Module
    conv1: ConcatConv2d
    norm2: eqx.Module
    conv2: ConcatConv2d
    norm3: eqx.Module

    def __init__(self, dim, *, key, impl="auto", plain=False):
        k1, k2 = jax.random.split(key)
        groups = min(32, dim)
        conv = dict(impl=impl, dtype=F32, use_bias=not plain)

        def norm():
            if plain:
                return GroupNormNHWC(groups)
            return GroupNorm(groups, dim, dtype=F32)

        self.norm1 = norm()
        self.conv1 = ConcatConv2d(dim, dim, 3, 1, 1, key=k1, **conv)
        self.norm2 = norm()
        self.conv2 = ConcatConv2d(dim, dim, 3, 1, 1, key=k2, **conv)
        self.norm3 = norm()

    def __call__(self, t, x):
        out = self.conv1(t, jax.nn.relu(self.norm1(x)))
        out = self.conv2(t, jax.nn.relu(self.norm2(out)))
        return self.norm3(out)


def odenet_vf(t, y, func):
    return func(t, y)


def make_odenet(quick: bool = False, plain: bool = False) -> Problem:
    """(b); ``plain``: the block as users often write it (GroupNorm without affine parameters,
    convolutions without biases) under a batch mean of per-sample squared norms, whose adjoint
    (a_y = 2 y / batch) is large enough for the backward error control to matter."""
    batch, size, dim = (8, 6, 16) if quick else (128, 6, 64)
    kf, ky = jax.random.split(jax.random.key(1))
    func = ODEFunc(dim, key=kf, plain=plain)
    y0 = jax.random.normal(ky, (batch, size, size, dim), F32)
    ts = np.array([0.0, 1.0], np.float32)

    def make_torch():
        torch = _torch()
        nn = torch.nn

        class TorchConcatConv2d(nn.Module):
            def __init__(self, conv: ConcatConv2d):
                super().__init__()
                self._layer = nn.Conv2d(dim + 1, dim, 3, 1, 1, bias=not plain)
                with torch.no_grad():
                    self._layer.weight.copy_(_t(conv.weight).permute(3, 2, 0, 1))
                    if not plain:
                        self._layer.bias.copy_(_t(conv.bias))

            def forward(self, t, x):
                tt = torch.ones_like(x[:, :1, :, :]) * t
                return self._layer(torch.cat([tt, x], 1))

        class TorchODEfunc(nn.Module):
            def __init__(self):
                super().__init__()
                groups = min(32, dim)
                self.norm1 = nn.GroupNorm(groups, dim, affine=not plain)
                self.relu = nn.ReLU(inplace=True)
                self.conv1 = TorchConcatConv2d(func.conv1)
                self.norm2 = nn.GroupNorm(groups, dim, affine=not plain)
                self.conv2 = TorchConcatConv2d(func.conv2)
                self.norm3 = nn.GroupNorm(groups, dim, affine=not plain)
                self.nfe = 0

            def forward(self, t, x):
                self.nfe += 1
                out = self.relu(self.norm1(x))
                out = self.conv1(t, out)
                out = self.relu(self.norm2(out))
                out = self.conv2(t, out)
                return self.norm3(out)

        y0_t = _t(y0).permute(0, 3, 1, 2).contiguous()  # torch's ODE-Net is NCHW
        if plain:
            return TorchODEfunc(), y0_t, _t(ts), lambda ys: torch.sum(ys[-1] ** 2) / batch
        return TorchODEfunc(), y0_t, _t(ts), lambda ys: torch.mean(ys[-1] ** 2)

    if plain:
        title = (
            f"(b2) ODE-Net block as users write it: (b) with GroupNorm without affine "
            f"parameters, convolutions without biases, loss sum(y(1)**2) / {batch}"
        )
    else:
        title = (
            f"(b) ODE-Net block: batch {batch}, {size}x{size}x{dim} NHWC, 2x ConcatConv2d 3x3 + "
            "GroupNorm, t in [0, 1], dopri5, rtol = atol = 1e-3"
        )
    return Problem(
        name="odenet_plain" if plain else "odenet",
        title=title,
        vf=odenet_vf,
        params=func,
        y0=y0,
        ts=ts,
        loss=(lambda ys: jnp.sum(ys[-1] ** 2) / batch)
        if plain
        else (lambda ys: jnp.mean(ys[-1] ** 2)),
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


PROBLEMS = {
    "mlp": make_mlp,
    "mlp_eqx": make_mlp_eqx,
    "odenet": make_odenet,
    "odenet_plain": lambda quick=False: make_odenet(quick, plain=True),
    "spiral": make_spiral,
}
