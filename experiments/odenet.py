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
import time
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from configs.odenet import SMOKE, ODENetConfig
from experiments import common
from experiments.common.images import (
    DTYPE,
    NUM_CLASSES,
    cross_entropy,
    describe_data,
    evaluate_split,
    is_correct,
    load_splits,
    random_crop,
    to_float,
)
from experiments.common.loop import optimizer_for
from ode_jax.nn import (
    ConvODEField,
    Downsample,
    ImageClassifier,
    ODEBlock,
    ResBlock,
    count_params,
    odenet_norm,
)


def make_model(cfg: ODENetConfig, key) -> ImageClassifier:
    """The classifier ``cfg.model`` with freshly initialised parameters."""
    kd, kb, kl = jax.random.split(key, 3)
    if cfg.model == "resnet":
        body = tuple(
            ResBlock(cfg.width, key=k, dtype=DTYPE) for k in jax.random.split(kb, cfg.res_blocks)
        )
    else:
        settings = cfg.solve_settings()
        if cfg.model == "rknet":  # the same block, differentiated through the solver's steps
            settings = settings.replace(adjoint="discrete")
        field = ConvODEField(cfg.width, key=kb, impl=cfg.conv_impl, dtype=DTYPE)
        body = ODEBlock(field, 1.0, settings=settings, regulariser=cfg.regulariser(1.0))
    linear = eqx.nn.Linear(cfg.width, NUM_CLASSES, dtype=DTYPE, key=kl)
    return ImageClassifier(
        Downsample(cfg.width, key=kd, dtype=DTYPE), body, odenet_norm(cfg.width, DTYPE), linear
    )


# --- the task ---------------------------------------------------------------------------------


def build(cfg: ODENetConfig) -> common.Task:
    print(describe_data(cfg.data_dir), flush=True)
    splits = load_splits(cfg.data_dir, cfg.val_size)
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
        init_model,
        get_batch,
        loss,
        evaluate,
        curve_keys=("val_error",),
        select="val_error",
        loss_label="cross-entropy (nats)" + (" + penalty" if cfg.reg != "none" else ""),
    )


def load_config(run) -> ODENetConfig:
    """The resolved config a run folder was trained with."""
    path = Path(run) / "config.json"
    if not path.exists():
        raise common.cli.UserError(
            f"{run} is not an odenet run folder (no config.json); train one first: "
            f"python -m experiments.odenet --out {run} (add --smoke for a quick one)"
        )
    resolved = json.loads(path.read_text())
    return common.config_from_dict(ODENetConfig, resolved)


def load_model(run, which: str = "best") -> tuple[ImageClassifier, ODENetConfig]:
    """The model of a finished (or running) run folder: its ``best`` (lowest validation error)."""
    run = Path(run)
    cfg = load_config(run)
    like = make_model(cfg, jax.random.key(0))
    path = run / which / common.checkpoint.BEST_MODEL
    if not path.exists():
        raise common.cli.UserError(f"{run} has no {which}/ model yet (no evaluation has run)")
    return eqx.tree_deserialise_leaves(path, like), cfg


# --- measurements -----------------------------------------------------------------------------


def profile_step(cfg: ODENetConfig, model=None, repeats: int = 3) -> dict:
    """Cost of one training step at ``cfg.batch_size`` on random images.

    Returns parameters, forward/backward NFE, the compiled step's memory (XLA's
    memory_analysis: peak temporaries plus arguments and outputs), compile seconds and the
    median of ``repeats`` timed steps.
    """
    model = make_model(cfg, jax.random.key(cfg.seed)) if model is None else model
    optimizer = optimizer_for(cfg)
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
    splits = load_splits(cfg.data_dir, cfg.val_size)
    test = evaluate_split(model, *splits["test"], cfg.eval_batch)
    steps_per_epoch = len(splits["train"][0]) / cfg.batch_size
    per_step = common.run.steady_seconds_per_step(result)  # compilation left out
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


def main(argv=None) -> dict | str | list:
    from experiments import odenet_report  # imports this module

    return common.cli.dispatch(
        "odenet",
        argv,
        lambda argv: common.main(ODENetConfig, SMOKE, build, finish, argv),
        {
            "table": common.cli.Subcommand(
                common.cli.RunsArgs,
                odenet_report.table,
                "collect finished runs: table.md, metrics.json, curves.png",
                common.cli.RunsArgs(out="results/odenet"),
            ),
            "profile": common.cli.Subcommand(
                None,
                odenet_report.profile_models,
                "cost of one training step of each model [--out FILE]",
            ),
        },
    )


if __name__ == "__main__":
    common.cli.entry(main)
