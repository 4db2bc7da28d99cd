"""(d) One full training step of the ODE-Net of Table 1, every library on the same weights.

The model is torchdiffeq's ``odenet_mnist`` as ``experiments.odenet`` builds it (channels-last,
ConcatConv2d ``impl="auto"``: matmuls on the CPU, the native convolution on a GPU):
conv3x3 1->C, [GroupNorm, ReLU, conv4x4/2] x 2, an ODE block
(GN-ReLU-ConcatConv3x3-GN-ReLU-ConcatConv3x3-GN) on t in [0, 1] solved by dopri5 at
rtol = atol = 1e-3, then GN, ReLU, global average pool, linear C->10. A step is cross-entropy on
a fixed random batch of 28x28 inputs, its gradient and one SGD update (lr 0.1, momentum 0.9, as
torchdiffeq's example). Only the ODE solve differs between the JAX methods; torch runs the same
architecture in NCHW with the JAX weights copied in (forward logits checked to agree).

Every timed call is the same first step from the same parameters (JAX: a pure function; torch:
parameters restored and the momentum buffer cleared first), so every call does the same work.

    python -m benchmarks.train_step                  # full size (batch 128, width 64)
    python -m benchmarks.train_step --quick          # batch 8, width 16: seconds
    python -m benchmarks.run --cases train           # the same section inside the benchmark report
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

import ode_jax
from configs.odenet import ODENetConfig
from experiments.odenet import make_model
from ode_jax.nn._conv import resolve_impl

from . import cli
from .measure import (
    count_calls,
    count_nfes,
    markdown_table,
    number,
    pick_torch_threads,
    round_order,
    rss_peak_delta_mb,
)
from .methods import counting, torch_available
from .problems import _t

F32 = jnp.float32
JAX_STEP_METHODS = ("ode_jax-continuous", "ode_jax-discrete", "diffrax-rca", "diffrax-backsolve")
TORCH_STEP_METHODS = ("torchdiffeq-adjoint", "torchdiffeq")
OURS = ("ode_jax-continuous", "ode_jax-discrete")


@dataclasses.dataclass(frozen=True)
class Setup:
    """Sizes and solver settings of the step (all methods)."""

    batch: int = 128  # images per step (torchdiffeq's odenet_mnist)
    width: int = 64  # channels after downsampling
    rtol: float = 1e-3
    atol: float = 1e-3
    max_steps: int = 1024  # as configs/odenet.py (bounds the discrete adjoint's step buffer)
    lr: float = 0.1
    momentum: float = 0.9
    seed: int = 0

    @classmethod
    def make(cls, quick: bool = False, **overrides) -> Setup:
        return cls(**({"batch": 8, "width": 16} if quick else {}), **overrides)


def make_data(setup: Setup):
    """A fixed random batch: images (N, 28, 28, 1) float32 in [0, 1), labels (N,) int32."""
    kx, ky = jax.random.split(jax.random.key(setup.seed + 1))
    x = jax.random.uniform(kx, (setup.batch, 28, 28, 1), F32)
    y = jax.random.randint(ky, (setup.batch,), 0, 10, jnp.int32)
    return x, y


def make_jax_model(setup: Setup):
    """experiments.odenet's ODE-Net classifier (float32, NHWC, ConcatConv2d impl="auto")."""
    cfg = ODENetConfig(width=setup.width, conv_impl="auto", rtol=setup.rtol, atol=setup.atol)
    return make_model(cfg, jax.random.key(setup.seed))


def _field_vf(t, y, field):
    return field(t, y)


def ode_solver(name: str, setup: Setup, vf: Callable = _field_vf) -> Callable:
    """``solve(field, h0) -> h(1)`` of one JAX method (``vf(t, y, field)`` may count calls)."""
    ts = np.array([0.0, 1.0], np.float32)
    if name.startswith("ode_jax-"):
        adjoint = name.removeprefix("ode_jax-")

        def solve(field, h0):
            sol = ode_jax.odeint(
                vf,
                h0,
                ts,
                field,
                solver="dopri5",
                rtol=setup.rtol,
                atol=setup.atol,
                max_steps=setup.max_steps,
                adjoint=adjoint,
            )
            return sol.ys[-1]

        return solve
    import diffrax

    adjoint = {
        "diffrax-rca": diffrax.RecursiveCheckpointAdjoint,
        "diffrax-backsolve": diffrax.BacksolveAdjoint,
    }[name]()
    term = diffrax.ODETerm(vf)
    t0, t1 = np.float32(0.0), np.float32(1.0)  # float32 times also when x64 is on (tests)

    def solve(field, h0):
        sol = diffrax.diffeqsolve(
            term,
            diffrax.Dopri5(),
            t0,
            t1,
            None,
            h0,
            field,
            stepsize_controller=diffrax.PIDController(rtol=setup.rtol, atol=setup.atol),
            adjoint=adjoint,
            max_steps=setup.max_steps,
        )
        return sol.ys[-1]

    return solve


def logits_fn(static, solve: Callable) -> Callable:
    """``logits(params, x_NHWC) -> (N, 10)`` with the ODE block solved by ``solve``."""

    def logits(params, x):
        model = eqx.combine(params, static)
        h = model.downsample(x)
        return model.head(solve(model.body.field, h))

    return logits


def loss_fn(static, solve: Callable) -> Callable:
    logits = logits_fn(static, solve)

    def loss(params, x, y):
        return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits(params, x), y))

    return loss


def make_optimizer(setup: Setup):
    return optax.sgd(setup.lr, momentum=setup.momentum)


def make_jax_step(static, solve: Callable, setup: Setup) -> Callable:
    """``step(params, opt_state, x, y) -> (params, opt_state, loss)``: one SGD step."""
    loss = loss_fn(static, solve)
    opt = make_optimizer(setup)

    def step(params, opt_state, x, y):
        value, grads = jax.value_and_grad(loss)(params, x, y)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, value

    return step


# --- torch ------------------------------------------------------------------------------------


def _conv_weight(w_HWIO):
    return _t(w_HWIO).permute(3, 2, 0, 1).contiguous()  # -> (O, I, kh, kw)


def make_torch_model(model, setup: Setup):
    """torchdiffeq's odenet_mnist (NCHW) with ``model``'s weights; ``.odefunc.nfe`` counts."""
    import torch
    import torchdiffeq
    from torch import nn

    width = setup.width

    def norm(jax_norm):
        gn = nn.GroupNorm(min(32, width), width)
        with torch.no_grad():
            gn.weight.copy_(_t(jax_norm.weight))
            gn.bias.copy_(_t(jax_norm.bias))
        return gn

    def conv(jax_conv, cin, kernel, stride=1, padding=0):
        c = nn.Conv2d(cin, width, kernel, stride, padding)
        with torch.no_grad():
            c.weight.copy_(_conv_weight(jax_conv.weight))
            c.bias.copy_(_t(jax_conv.bias))
        return c

    class ConcatConv2d(nn.Module):
        def __init__(self, jax_conv):
            super().__init__()
            self._layer = conv(jax_conv, width + 1, 3, 1, 1)

        def forward(self, t, x):
            tt = torch.ones_like(x[:, :1, :, :]) * t
            return self._layer(torch.cat([tt, x], 1))

    class ODEfunc(nn.Module):
        def __init__(self, field):
            super().__init__()
            self.norm1, self.norm2, self.norm3 = (norm(n) for n in field.norms)
            self.relu = nn.ReLU(inplace=True)
            self.conv1, self.conv2 = (ConcatConv2d(c) for c in field.convs)
            self.nfe = 0

        def forward(self, t, x):
            self.nfe += 1
            out = self.conv1(t, self.relu(self.norm1(x)))
            out = self.conv2(t, self.relu(self.norm2(out)))
            return self.norm3(out)

    class ODEBlock(nn.Module):
        def __init__(self, odefunc):
            super().__init__()
            self.odefunc = odefunc
            self.integration_time = torch.tensor([0.0, 1.0])
            self.adjoint = False
            self.fixed_step = None  # a step size: Euler instead of dopri5 (the weight check)

        def forward(self, x):
            solve = torchdiffeq.odeint_adjoint if self.adjoint else torchdiffeq.odeint
            if self.fixed_step is not None:
                options = dict(method="euler", options=dict(step_size=self.fixed_step))
            else:
                options = dict(rtol=setup.rtol, atol=setup.atol, method="dopri5")
            return solve(self.odefunc, x, self.integration_time, **options)[1]

    class ODENet(nn.Module):
        def __init__(self):
            super().__init__()
            ds = model.downsample
            self.downsample = nn.Sequential(
                conv(ds.convs[0], 1, 3),
                norm(ds.norms[0]),
                nn.ReLU(inplace=True),
                conv(ds.convs[1], width, 4, 2, 1),
                norm(ds.norms[1]),
                nn.ReLU(inplace=True),
                conv(ds.convs[2], width, 4, 2, 1),
            )
            self.block = ODEBlock(ODEfunc(model.body.field))
            linear = nn.Linear(width, 10)
            with torch.no_grad():
                linear.weight.copy_(_t(model.linear.weight))
                linear.bias.copy_(_t(model.linear.bias))
            self.head = nn.Sequential(
                norm(model.head_norm),
                nn.ReLU(inplace=True),
                nn.AdaptiveAvgPool2d((1, 1)),
                nn.Flatten(),
                linear,
            )

        def forward(self, x):
            return self.head(self.block(self.downsample(x)))

    net = ODENet()
    # The parameters every timed step starts from (each step's update is undone before the next).
    net.start_params = [p.detach().clone() for p in net.parameters()]
    return net


def torch_data(x, y):
    import torch

    labels = torch.as_tensor(np.asarray(y, np.int64), device=torch.get_default_device())
    return _t(x).permute(0, 3, 1, 2).contiguous(), labels


def make_torch_step(net, setup: Setup, adjoint: bool, x_t, y_t) -> Callable:
    """``step() -> loss``: parameters restored, one SGD step (momentum buffer starts empty)."""
    import torch

    params = list(net.parameters())
    start = net.start_params
    opt = torch.optim.SGD(params, lr=setup.lr, momentum=setup.momentum)

    def step():
        with torch.no_grad():
            for p, s in zip(params, start):
                p.copy_(s)
        opt.state.clear()
        opt.zero_grad(set_to_none=True)
        net.block.adjoint = adjoint
        loss = torch.nn.functional.cross_entropy(net(x_t), y_t)
        loss.backward()
        opt.step()
        return loss.item()

    return step


def torch_loss_and_grads(net, adjoint: bool, x_t, y_t):
    """Loss and the gradients, in ``net.parameters()`` order (for the tests)."""
    import torch

    net.zero_grad(set_to_none=True)
    net.block.adjoint = adjoint
    loss = torch.nn.functional.cross_entropy(net(x_t), y_t)
    loss.backward()
    return loss.item(), [p.grad.cpu().numpy().copy() for p in net.parameters()]


def jax_grads_torch_order(grads) -> list[np.ndarray]:
    """The JAX model's gradient as numpy arrays in the torch model's parameter order/layout."""
    ds, field = grads.downsample, grads.body.field

    def conv(c):
        return [np.asarray(c.weight).transpose(3, 2, 0, 1), np.asarray(c.bias)]

    def norm(n):
        return [np.asarray(n.weight), np.asarray(n.bias)]

    out = conv(ds.convs[0]) + norm(ds.norms[0]) + conv(ds.convs[1]) + norm(ds.norms[1])
    out += conv(ds.convs[2])
    out += norm(field.norms[0]) + norm(field.norms[1]) + norm(field.norms[2])
    out += conv(field.convs[0]) + conv(field.convs[1])
    out += norm(grads.head_norm) + [np.asarray(grads.linear.weight), np.asarray(grads.linear.bias)]
    return out


# --- measurement ------------------------------------------------------------------------------


@dataclasses.dataclass
class StepRunner:
    name: str
    step: Callable  # () -> None, one full training step, blocking
    compile_s: float = float("nan")
    temp_mb: float = float("nan")
    nfe_fwd: float = float("nan")
    nfe_bwd: float = float("nan")
    rss_mb: float = float("nan")
    loss: float = float("nan")
    times: list = dataclasses.field(default_factory=list)
    count: Callable | None = None  # () -> (NFE fwd, NFE bwd), run after the timing


def _compile(fn, *args):
    t0 = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    seconds = time.perf_counter() - t0
    mem = compiled.memory_analysis()
    return compiled, seconds, float("nan") if mem is None else mem.temp_size_in_bytes / 2**20


def jax_step_runner(name, setup, params, static, opt_state, x, y, count_nfe=True) -> StepRunner:
    step = make_jax_step(static, ode_solver(name, setup), setup)
    compiled, seconds, temp = _compile(step, params, opt_state, x, y)
    r = StepRunner(
        name,
        step=lambda: jax.block_until_ready(compiled(params, opt_state, x, y)),
        compile_s=seconds,
        temp_mb=temp,
    )
    r.loss = float(compiled(params, opt_state, x, y)[2])
    if count_nfe:
        solve = ode_solver(name, setup, counting(_field_vf, counter := [0]))
        r.count = lambda: count_calls(
            counter,
            lambda: jax.jit(logits_fn(static, solve))(params, x),
            lambda: jax.jit(make_jax_step(static, solve, setup))(params, opt_state, x, y),
        )
    return r


def torch_step_runner(name, setup, net, x_t, y_t) -> StepRunner:
    import torch

    adjoint = name == "torchdiffeq-adjoint"
    step = make_torch_step(net, setup, adjoint, x_t, y_t)
    r = StepRunner(name, step=step)
    func = net.block.odefunc
    net.block.adjoint = adjoint
    with torch.no_grad():
        func.nfe = 0
        net(x_t)
        r.nfe_fwd = func.nfe
    func.nfe = 0
    r.loss = step()
    r.nfe_bwd = func.nfe - r.nfe_fwd
    return r


def euler_solver(step: float = 0.1) -> Callable:
    """``solve(field, h0)`` by fixed-step Euler: the same discretisation as torchdiffeq's
    ``method="euler"``, so the two libraries agree to float32 round-off."""
    ts = np.array([0.0, 1.0], np.float32)

    def solve(field, h0):
        sol = ode_jax.odeint(_field_vf, h0, ts, field, solver="euler", dt0=step, adjoint="discrete")
        return sol.ys[-1]

    return solve


def check_torch_forward(net, params, static, x, x_t, tol: float = 1e-4) -> float:
    """Max |logits_jax - logits_torch| with the ODE block solved by Euler (step 0.1) on both
    sides (adaptive solvers of different libraries agree only to their tolerance);
    AssertionError above ``tol`` (relative to the largest logit when that exceeds 1)."""
    import torch

    net.block.adjoint, net.block.fixed_step = False, 0.1
    try:
        with torch.no_grad():
            ref = net(x_t).cpu().numpy()
    finally:
        net.block.fixed_step = None
    ours = np.asarray(jax.jit(logits_fn(static, euler_solver(0.1)))(params, x))
    err = float(np.max(np.abs(ours - ref)))
    assert err <= tol * max(1.0, float(np.max(np.abs(ref)))), f"logits differ by {err:.2e}"
    return err


def run_section(
    quick: bool = False,
    methods=None,
    repeats: int = 7,
    budget_s: float = 120.0,
    count_nfe: bool = True,
    log=None,
):
    """Measure every method; returns ``(markdown section, target lines, rows)``."""
    log = log or cli.log
    setup = Setup.make(quick)
    methods = list(methods or (*JAX_STEP_METHODS, *TORCH_STEP_METHODS))
    methods = [m for m in methods if m in JAX_STEP_METHODS + TORCH_STEP_METHODS]
    if not torch_available():
        methods = [m for m in methods if m not in TORCH_STEP_METHODS]
    t_case = time.perf_counter()
    model = make_jax_model(setup)
    params, static = eqx.partition(model, eqx.is_inexact_array)
    opt_state = make_optimizer(setup).init(params)
    x, y = make_data(setup)

    runners, torch_threads, logits_err = [], None, None
    if any(m in TORCH_STEP_METHODS for m in methods):
        import torch

        net = make_torch_model(model, setup)
        x_t, y_t = torch_data(x, y)
        logits_err = check_torch_forward(net, params, static, x, x_t)
        with torch.no_grad():
            h_t = net.downsample(x_t)
        probe = _ThreadsProbe(net.block.odefunc, h_t)
        torch_threads = pick_torch_threads(probe)
        log(f"  logits |JAX - torch| max {logits_err:.1e}; torch threads: {torch_threads}")
    for name in methods:
        log(f"  compiling {name} ...")
        if name in JAX_STEP_METHODS:
            runners.append(jax_step_runner(name, setup, params, static, opt_state, x, y, count_nfe))
        else:
            runners.append(torch_step_runner(name, setup, net, x_t, y_t))

    round_s = 0.0
    for r in runners:  # warm-up, and the size of a round
        t0 = time.perf_counter()
        r.step()
        round_s += time.perf_counter() - t0
    rounds = int(max(3, min(repeats, budget_s // max(round_s, 1e-9))))
    log(f"  timing {rounds} interleaved rounds (~{round_s:.1f} s each) ...")
    for i in range(rounds):
        for r in round_order(runners, i):
            t0 = time.perf_counter()
            r.step()
            r.times.append(time.perf_counter() - t0)
    for r in runners:
        r.rss_mb = rss_peak_delta_mb(r.step)
    count_nfes(runners)  # last: no callback runs before the timed calls

    rows = summarise(runners)
    title = (
        f"(d) ODE-Net training step (Table 1 model): batch {setup.batch}, 28x28x1 -> "
        f"6x6x{setup.width}, ODE block dopri5 rtol = atol = {setup.rtol:g}, cross-entropy + SGD "
        f"(lr {setup.lr:g}, momentum {setup.momentum:g})"
    )
    text = (
        f"### {title}\n\n{table(rows)}\n\n"
        f"Medians of {rounds} interleaved rounds of one step each (after a warm-up step); "
        "JAX: one jitted step (loss, gradient, optax.sgd update) per method, only the ODE solve "
        f"differs, ConcatConv2d impl={resolve_impl('auto')}, NHWC; compile = lower + compile of "
        "the step. torch: "
        "the same weights in NCHW"
        + (
            f" (forward logits, ODE block by Euler step 0.1 on both sides: max difference "
            f"{logits_err:.1e})"
            if logits_err is not None
            else ""
        )
        + ", parameters restored before each step"
        + (f", torch threads: {torch_threads}" if torch_threads else "")
        + f". step x = step / fastest non-ode_jax method. Case took "
        f"{time.perf_counter() - t_case:.0f} s.\n"
    )
    return text, target_lines(rows), rows


@dataclasses.dataclass
class _ThreadsProbe:
    """What benchmarks.measure.pick_torch_threads needs: make_torch() -> (func, y0, ts, loss)."""

    func: object
    h0: object

    def make_torch(self):
        import torch

        return self.func, self.h0, torch.tensor([0.0, 1.0]), None


def summarise(runners) -> list[dict]:
    rows = []
    for r in runners:
        rows.append(
            dict(
                method=r.name,
                step=1e3 * float(np.median(r.times)) if r.times else float("nan"),
                compile=r.compile_s,
                nfe_fwd=r.nfe_fwd,
                nfe_bwd=r.nfe_bwd,
                temp=r.temp_mb,
                rss=r.rss_mb,
                loss=r.loss,
            )
        )
    others = [row["step"] for row in rows if row["method"] not in OURS]
    best = min(others) if others else float("nan")
    for row in rows:
        row["x_step"] = row["step"] / best
    return rows


COLUMNS = [
    ("method", "method", "{}"),
    ("step", "step ms", "{:.0f}"),
    ("x_step", "step x", "{:.2f}"),
    ("compile", "compile s", "{:.1f}"),
    ("nfe_fwd", "NFE fwd", "{:.0f}"),
    ("nfe_bwd", "NFE bwd", "{:.0f}"),
    ("temp", "XLA temp MB", "{:.1f}"),
    ("rss", "RSS peak MB", "{:.1f}"),
    ("loss", "loss", "{:.5f}"),
]


def table(rows) -> str:
    return markdown_table(rows, [(key, head, number(spec)) for key, head, spec in COLUMNS])


def target_lines(rows) -> list[str]:
    out = []
    for row in rows:
        if row["method"] in OURS and np.isfinite(row["x_step"]):
            ok = "ok" if row["x_step"] <= 1.0 else "MISSED"
            out.append(
                f"- (d) {row['method']}: step / fastest other = {row['x_step']:.2f} "
                f"(target <= 1.0) {ok}"
            )
    return out


@dataclasses.dataclass(frozen=True)
class Args:
    """(d) One full training step of the ODE-Net of Table 1, every library on the same weights.

    List flags take names separated by commas or spaces.
    """

    quick: bool = False  # batch 8, width 16, 3 rounds, 8 s of timing
    # of ode_jax-continuous, ode_jax-discrete, diffrax-rca, diffrax-backsolve,
    # torchdiffeq-adjoint, torchdiffeq; all: every one
    methods: tuple[str, ...] = ("all",)
    repeats: int = 7  # timed rounds (max)
    budget: float = 120.0  # seconds of timing (caps rounds)
    torch: bool = True  # run torchdiffeq (--no-torch: skip it)
    nfe: bool = True  # count NFEs (--no-nfe: skip)
    out: str = ""  # markdown file to write ('' = none)

    def __post_init__(self):
        if self.repeats < 1:
            raise cli.UserError(f"--repeats must be >= 1, got {self.repeats}")


def main(argv=None):
    args = cli.parse(Args, argv, "train_step")
    methods = cli.names(args.methods, [*JAX_STEP_METHODS, *TORCH_STEP_METHODS], "--methods")
    if not args.torch:
        methods = [m for m in methods if m not in TORCH_STEP_METHODS]
    if not methods:
        raise cli.UserError("no method left to run: see --methods and --no-torch")
    cli.writable(args.out)
    text, checks, _ = run_section(
        quick=args.quick,
        methods=methods,
        repeats=min(args.repeats, 3) if args.quick else args.repeats,
        budget_s=min(args.budget, 8.0) if args.quick else args.budget,
        count_nfe=args.nfe,
    )
    return cli.publish(text + "\n" + "\n".join(checks) + "\n", args.out)


if __name__ == "__main__":
    cli.entry(main)
