"""ODE-Net vs ResNet vs RK-Net on MNIST-format images (paper Table 1).

Three classifiers share torchdiffeq's ``odenet_mnist.py`` backbone, all channels-last (NHWC):
downsampling to ``width`` channels at 6x6 (3x3 conv, then two 4x4 stride-2 convs with
GroupNorm + ReLU between), then either ``res_blocks`` residual blocks (ResNet), one ODE block
solved by dopri5 with the continuous adjoint (ODE-Net), or the same ODE block differentiated by
backpropagating through the solver (RK-Net, the discrete adjoint); head GroupNorm, ReLU, average
pool, linear. The validation split (from the training files) selects the model; the test split is
read once, at the end.

    python -m experiments.odenet --model odenet --out runs/odenet   # --help lists every flag
    python -m experiments.odenet table runs/odenet/{odenet,resnet,rknet} --out results/odenet
    python -m experiments.odenet profile --out results/odenet/step_profile.json  # step cost
"""

from __future__ import annotations

import json
import math
import shutil
import sys
import time
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from configs.odenet import MODELS, SMOKE, ODENetConfig
from experiments import common
from experiments.common import report
from experiments.common.loop import make_optimizer
from ode_jax.data import load_idx_dataset
from ode_jax.nn import ConcatConv2d, GroupNorm, ODEBlock

DTYPE = jnp.float32
NUM_CLASSES = 10


def _norm(channels: int) -> GroupNorm:
    return GroupNorm(min(32, channels), channels, dtype=DTYPE)  # torchdiffeq's norm()


class Conv2d(eqx.Module):
    """Plain channels-last convolution, torch ``Conv2d`` initialisation (no time channel)."""

    weight: jax.Array  # (k, k, in, out), HWIO
    bias: jax.Array | None  # (out,)
    stride: int = eqx.field(static=True)
    padding: int = eqx.field(static=True)

    def __init__(self, cin, cout, kernel, stride=1, padding=0, use_bias=True, *, key):
        wkey, bkey = jax.random.split(key)
        bound = 1.0 / math.sqrt(cin * kernel**2)
        self.weight = jax.random.uniform(wkey, (kernel, kernel, cin, cout), DTYPE, -bound, bound)
        self.bias = jax.random.uniform(bkey, (cout,), DTYPE, -bound, bound) if use_bias else None
        self.stride, self.padding = stride, padding

    def __call__(self, x_NHWC):
        p = self.padding
        out = jax.lax.conv_general_dilated(
            x_NHWC,
            self.weight,
            (self.stride, self.stride),
            ((p, p), (p, p)),
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )
        return out if self.bias is None else out + self.bias.reshape(1, 1, 1, -1)


class Downsample(eqx.Module):
    """(N, 28, 28, 1) -> (N, 6, 6, width): conv3x3, [GN, ReLU, conv4x4/2] x 2."""

    convs: tuple
    norms: tuple

    def __init__(self, width: int, *, key):
        k0, k1, k2 = jax.random.split(key, 3)
        self.convs = (
            Conv2d(1, width, 3, key=k0),
            Conv2d(width, width, 4, 2, 1, key=k1),
            Conv2d(width, width, 4, 2, 1, key=k2),
        )
        self.norms = (_norm(width), _norm(width))

    def __call__(self, x):
        x = self.convs[0](x)
        for norm, conv in zip(self.norms, self.convs[1:]):
            x = conv(jax.nn.relu(norm(x)))
        return x


class ConvField(eqx.Module):
    """torchdiffeq's ODEfunc: GN, ReLU, ConcatConv, GN, ReLU, ConcatConv, GN."""

    norms: tuple
    convs: tuple

    def __init__(self, width: int, *, key, impl: str = "auto"):
        k1, k2 = jax.random.split(key)
        self.norms = (_norm(width), _norm(width), _norm(width))
        self.convs = (
            ConcatConv2d(width, width, 3, 1, 1, key=k1, dtype=DTYPE, impl=impl),
            ConcatConv2d(width, width, 3, 1, 1, key=k2, dtype=DTYPE, impl=impl),
        )

    def __call__(self, t, x):
        x = self.convs[0](t, jax.nn.relu(self.norms[0](x)))
        x = self.convs[1](t, jax.nn.relu(self.norms[1](x)))
        return self.norms[2](x)


class ResBlock(eqx.Module):
    """Pre-activation residual block: x + conv(ReLU(GN(conv(ReLU(GN(x)))))), bias-free convs."""

    norms: tuple
    convs: tuple

    def __init__(self, width: int, *, key):
        k1, k2 = jax.random.split(key)
        self.norms = (_norm(width), _norm(width))
        self.convs = (
            Conv2d(width, width, 3, 1, 1, use_bias=False, key=k1),
            Conv2d(width, width, 3, 1, 1, use_bias=False, key=k2),
        )

    def __call__(self, x):
        h = self.convs[0](jax.nn.relu(self.norms[0](x)))
        return x + self.convs[1](jax.nn.relu(self.norms[1](h)))


class Classifier(eqx.Module):
    """Downsample -> body (ODEBlock or ResBlocks) -> GN, ReLU, mean pool, linear.

    ``model(x_NHWC, probe)`` returns ``(logits_NK, stats)``; ``stats["nfe"]`` is the forward
    NFE of the ODE block (0 for the ResNet).
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


def make_model(cfg: ODENetConfig, key) -> Classifier:
    """The classifier ``cfg.model`` with freshly initialised parameters."""
    kd, kb, kl = jax.random.split(key, 3)
    if cfg.model == "resnet":
        body = tuple(ResBlock(cfg.width, key=k) for k in jax.random.split(kb, cfg.res_blocks))
    else:
        settings = cfg.solve_settings()
        if cfg.model == "rknet":  # the same block, differentiated through the solver's steps
            settings = settings.replace(adjoint="discrete")
        field = ConvField(cfg.width, key=kb, impl=cfg.conv_impl)
        body = ODEBlock(field, 1.0, settings=settings, regulariser=cfg.regulariser(1.0))
    linear = eqx.nn.Linear(cfg.width, NUM_CLASSES, dtype=DTYPE, key=kl)
    return Classifier(Downsample(cfg.width, key=kd), body, _norm(cfg.width), linear)


def count_params(model) -> int:
    return sum(x.size for x in jax.tree.leaves(eqx.filter(model, eqx.is_inexact_array)))


# --- data -----------------------------------------------------------------------------------


def load_splits(cfg: ODENetConfig):
    """``{"train", "val", "test"}``: (images uint8 (N, H, W, 1), labels int32 (N,)).

    The validation split is a fixed (seed 0) random subset of the training files.
    """
    data = load_idx_dataset(cfg.data_dir, NUM_CLASSES)
    n = len(data.train_images)
    if not 0 < cfg.val_size < n:
        raise ValueError(f"val_size={cfg.val_size} must be in (0, {n}) for {cfg.data_dir}")
    order = np.random.default_rng(0).permutation(n)
    val, train = order[: cfg.val_size], order[cfg.val_size :]
    x, y = data.train_images[..., None], data.train_labels
    return {
        "train": (x[train], y[train]),
        "val": (x[val], y[val]),
        "test": (data.test_images[..., None], data.test_labels),
    }


def to_float(images_uint8):
    return images_uint8.astype(DTYPE) / 255.0


def random_crop(key, images, padding: int):
    """Each image shifted by up to ``padding`` pixels (zero fill): pad, then crop back."""
    if padding == 0:
        return images
    n, h, w, _ = images.shape
    padded = jnp.pad(images, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    offsets = jax.random.randint(key, (n, 2), 0, 2 * padding + 1)

    def crop(img, off):
        return jax.lax.dynamic_slice(img, (off[0], off[1], 0), (h, w, img.shape[-1]))

    return jax.vmap(crop)(padded, offsets)


def cross_entropy(logits, labels):
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))


def is_correct(logits_NK, labels_N):
    """Whether the top class is the label: (N,) bool (argmax's int in the labels' dtype)."""
    labels_N = jnp.asarray(labels_N)
    return jnp.argmax(logits_NK, -1).astype(labels_N.dtype) == labels_N


@eqx.filter_jit
def _eval_batch(model, images, labels):
    logits, stats = model(to_float(images))
    wrong = jnp.sum(~is_correct(logits, labels))
    loss = jnp.sum(optax.softmax_cross_entropy_with_integer_labels(logits, labels))
    return wrong, loss, stats["nfe"]


def evaluate_split(model, images, labels, batch: int) -> dict:
    """Error rate, mean loss and mean forward NFE over a split, in batches of ``batch``."""
    wrong = loss = nfe = 0.0
    starts = range(0, len(images), batch)
    for s in starts:  # the last, smaller batch compiles once more
        w, lo, n = _eval_batch(model, images[s : s + batch], labels[s : s + batch])
        wrong, loss, nfe = wrong + float(w), loss + float(lo), nfe + float(n)
    return {"error": wrong / len(images), "loss": loss / len(images), "nfe": nfe / len(starts)}


# --- the task ---------------------------------------------------------------------------------


def build(cfg: ODENetConfig) -> common.Task:
    splits = load_splits(cfg)
    train_x, train_y = (jnp.asarray(a) for a in splits["train"])

    def init_model(key):
        return make_model(cfg, key)

    @jax.jit
    def get_batch(key):
        kidx, kcrop = jax.random.split(key)
        idx = jax.random.randint(kidx, (cfg.batch_size,), 0, train_x.shape[0])
        images = to_float(train_x[idx])
        if cfg.augment:
            images = random_crop(kcrop, images, cfg.crop_padding)
        return {"images": images, "labels": train_y[idx]}

    def loss(model, batch, key, probe):
        logits, stats = model(batch["images"], probe, key if cfg.reg != "none" else None)
        acc = jnp.mean(is_correct(logits, batch["labels"]))
        ce = cross_entropy(logits, batch["labels"])
        penalties = stats.get("penalties", {})
        size = batch["images"].shape[0] * 36 * cfg.width  # the ODE state: (N, 6, 6, width)
        aux = {"nfe_fwd": stats["nfe"], "train_acc": acc, "ce": ce, **penalties}
        return ce + cfg.penalty(penalties, size), aux

    def evaluate(model):
        val = evaluate_split(model, *splits["val"], cfg.eval_batch)
        return {f"val_{k}": v for k, v in val.items()}

    # Model selection: the harness keeps the parameters with the lowest validation error so far
    # in out/best/ (finish() tests that model).
    return common.Task(
        init_model, get_batch, loss, evaluate, curve_keys=("val_error",), select="val_error"
    )


def load_config(run) -> ODENetConfig:
    """The resolved config a run folder was trained with."""
    resolved = json.loads((Path(run) / "config.json").read_text())
    return common.config_from_dict(ODENetConfig, resolved)


def load_model(run, which: str = "best") -> tuple[Classifier, ODENetConfig]:
    """The model of a finished (or running) run folder: its ``best`` (lowest validation error)."""
    run = Path(run)
    cfg = load_config(run)
    like = make_model(cfg, jax.random.key(0))
    return eqx.tree_deserialise_leaves(run / which / common.checkpoint.BEST_MODEL, like), cfg


# --- measurements -----------------------------------------------------------------------------


def profile_step(cfg: ODENetConfig, model=None, repeats: int = 3) -> dict:
    """Cost of one training step at ``cfg.batch_size`` on random images.

    Returns parameters, forward/backward NFE, the compiled step's memory (XLA's
    memory_analysis: peak temporaries plus arguments and outputs), compile seconds and the
    median of ``repeats`` timed steps.
    """
    model = make_model(cfg, jax.random.key(cfg.seed)) if model is None else model
    optimizer = make_optimizer(*common.loop._optimizer_settings(cfg))
    opt_state = optimizer.init(eqx.filter(model, eqx.is_inexact_array))
    mesh = common.parallel.make_mesh(1)
    step = common.loop.make_train_step(_synthetic_loss, optimizer, mesh)
    key = jax.random.key(1)
    batch = {
        "images": jax.random.uniform(key, (cfg.batch_size, 28, 28, 1), DTYPE),
        "labels": jax.random.randint(key, (cfg.batch_size,), 0, NUM_CLASSES),
    }
    t0 = time.perf_counter()
    compiled = step.lower(model, opt_state, batch, key).compile()
    compile_s = time.perf_counter() - t0
    mem = compiled.compiled.memory_analysis()  # the jax.stages.Compiled inside equinox's
    times, metrics = [], None
    for _ in range(repeats + 1):  # the first call pays for dispatch warm-up
        t0 = time.perf_counter()
        metrics = jax.block_until_ready(compiled(model, opt_state, batch, key)[2])
        times.append(time.perf_counter() - t0)
    out = {
        "params": count_params(model),
        "nfe_fwd": int(metrics["nfe_fwd"]),
        "nfe_bwd": int(metrics["nfe_bwd"]),
        "compile_seconds": compile_s,
        "step_seconds": float(np.median(times[1:])),
    }
    if mem is not None:
        out["temp_mib"] = mem.temp_size_in_bytes / 2**20
        out["peak_mib"] = (
            mem.temp_size_in_bytes + mem.argument_size_in_bytes + mem.output_size_in_bytes
        ) / 2**20
    return out


def _synthetic_loss(model, batch, key, probe):
    del key
    logits, stats = model(batch["images"], probe)
    return cross_entropy(logits, batch["labels"]), {"nfe_fwd": stats["nfe"]}


def finish(cfg: ODENetConfig, task: common.Task, result: common.TrainResult, out: Path) -> dict:
    """Test error of the best-validation model, parameter count, step cost, time per epoch."""
    model, _ = load_model(out)
    best = min(result.evals, key=lambda r: r["val_error"])
    splits = load_splits(cfg)
    test = evaluate_split(model, *splits["test"], cfg.eval_batch)
    steps_per_epoch = len(splits["train"][0]) / cfg.batch_size
    per_step = result.timing["train_seconds"] / max(1, result.history[-1]["step"])
    metrics = {
        "model": cfg.model,
        "selected_step": best["step"],
        "val_error": best["val_error"],
        "test_error": test["error"],
        "test_nfe_fwd": test["nfe"],
        "params": count_params(model),
        "epoch_seconds": per_step * steps_per_epoch,
    }
    if cfg.measure_step:
        metrics["train_step"] = profile_step(cfg, model)
    return metrics


# --- the table of finished runs ------------------------------------------------------------

# Chen et al. (2018), Table 1: MNIST test error and parameters.
PAPER = {"resnet": (0.0041, 0.60e6), "rknet": (0.0047, 0.22e6), "odenet": (0.0042, 0.22e6)}
LABELS = {"resnet": "ResNet", "rknet": "RK-Net", "odenet": "ODE-Net"}
RUN_FILES = ("config.json", "metrics.json", "history.csv", "evals.csv", "training_curve.png")


def write_table(run_dirs, out) -> str:
    """Collect finished runs into ``out``: per-model files, metrics.json, table.md, curves.png."""
    out = Path(out)
    runs = []
    for d in map(Path, run_dirs):
        if not (d / "metrics.json").exists():
            raise SystemExit(f"error: {d} has no metrics.json (not a finished odenet run)")
        metrics = json.loads((d / "metrics.json").read_text())
        runs.append((metrics["model"], metrics, d))
        (out / metrics["model"]).mkdir(parents=True, exist_ok=True)
        for name in RUN_FILES:
            shutil.copy(d / name, out / metrics["model"] / name)
    runs.sort(key=lambda r: list(PAPER).index(r[0]))
    report.write_json(out / "metrics.json", {m: metrics for m, metrics, _ in runs})
    lines = [
        "| model | test error | val error | params | NFE fwd / bwd per step | "
        "step peak MiB | step s | epoch s | steps |\n",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    ]
    for m, met, _ in runs:
        step = met.get("train_step", {})
        nfe = f"{met['nfe_fwd_per_step']:.1f} / {met['nfe_bwd_per_step']:.1f}"
        nfe = "–" if m == "resnet" else nfe
        peak, seconds = step.get("peak_mib", math.nan), step.get("step_seconds", math.nan)
        lines.append(
            f"| {LABELS[m]} (ours, Fashion-MNIST) | {100 * met['test_error']:.2f}% | "
            f"{100 * met['val_error']:.2f}% | {met['params']:,} | {nfe} | {peak:.0f} | "
            f"{seconds:.2f} | {met['epoch_seconds']:.0f} | {met['steps']} |\n"
        )
    for m, (err, params) in PAPER.items():
        lines.append(
            f"| {LABELS[m]} (paper, MNIST) | {100 * err:.2f}% | | {params / 1e6:.2f}M | | | | | |\n"
        )
    table = "".join(lines)
    (out / "table.md").write_text(table)
    _plot_curves(out / "curves.png", runs)
    return table


def _plot_curves(path, runs):
    fig, (ax_loss, ax_err) = report.plt.subplots(1, 2, figsize=(10, 4))
    for m, _, d in runs:
        hist, evals = report.read_csv(d / "history.csv"), report.read_csv(d / "evals.csv")
        ax_loss.plot([r["step"] for r in hist], [r["loss"] for r in hist], label=LABELS[m])
        ax_err.plot(
            [r["step"] for r in evals], [100 * r["val_error"] for r in evals], "o-", label=LABELS[m]
        )
    cfg = json.loads((runs[0][2] / "config.json").read_text())
    if cfg["lr_schedule"] == "step":  # where the learning rate drops (the first run's schedule)
        for i, b in enumerate(cfg["lr_boundaries"]):
            x = round(b * cfg["steps"])
            label = f"lr x {cfg['lr_decay']:g}" if i == 0 else None
            ax_loss.axvline(x, color="gray", ls=":", lw=1, label=label)
    ax_loss.set(xlabel="step", ylabel="training loss (logged means)", yscale="log")
    ax_err.set(xlabel="step", ylabel="validation error (%)")
    for ax in (ax_loss, ax_err):
        ax.legend()
    report.save_figure(fig, path)


def profile_models(argv) -> list[dict]:
    """``profile [--out FILE] [config flags]``: :func:`profile_step` of every model, one process.

    Measures the three models back to back at the same settings (so on the same machine state),
    prints a table and writes the rows as JSON to ``--out`` when given.
    """
    argv = list(argv)
    out = common.cli.pop_option(argv, "--out")
    rows = []
    for model in MODELS:
        cfg = common.parse_config(ODENetConfig, SMOKE, argv + ["--model", model])
        rows.append(dict(model=model, batch_size=cfg.batch_size, **profile_step(cfg)))
        r = rows[-1]
        print(
            f"{LABELS[model]:8s} params {r['params']:>8,}  NFE {r['nfe_fwd']:>3} / "
            f"{r['nfe_bwd']:>3}  peak {r.get('peak_mib', math.nan):6.1f} MiB  "
            f"step {r['step_seconds']:.3f} s  compile {r['compile_seconds']:.1f} s",
            flush=True,
        )
    if out is not None:
        report.write_json(out, rows)
    return rows


def main(argv=None) -> dict | str | list:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["profile"]:
        return profile_models(argv[1:])
    if argv[:1] == ["table"]:
        runs, out = common.cli.runs_and_out(argv[1:], "results/odenet")
        table = write_table(runs, out)
        print(table)
        return table
    return common.main(ODENetConfig, SMOKE, build, finish, argv)


if __name__ == "__main__":
    main()
