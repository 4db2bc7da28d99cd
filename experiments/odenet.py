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
import time
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from configs.odenet import MODELS, SMOKE, ODENetConfig
from experiments import common
from experiments.common import report
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
        init_model, get_batch, loss, evaluate, curve_keys=("val_error",), select="val_error"
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


TABLE_COLUMNS = (
    ("label", "model", "{}"),
    ("test_error", "test error", "{:.2%}"),
    ("val_error", "val error", "{:.2%}"),
    ("params", "params", "{:,}"),
    ("nfe", "NFE fwd / bwd per step", "{}"),
    ("peak_mib", "step peak MiB", "{:.0f}"),
    ("step_seconds", "step s", "{:.2f}"),
    ("epoch_seconds", "epoch s", "{:.0f}"),
    ("steps", "steps", "{}"),
)


def write_table(run_dirs, out) -> str:
    """Collect finished runs into ``out``: per-model files, metrics.json, table.md, curves.png."""
    out = Path(out)
    runs = []
    for d in map(Path, run_dirs):
        if not (d / "metrics.json").exists():
            raise common.cli.UserError(f"{d} has no metrics.json (not a finished odenet run)")
        metrics = json.loads((d / "metrics.json").read_text())
        runs.append((metrics["model"], metrics, d))
        (out / metrics["model"]).mkdir(parents=True, exist_ok=True)
        for name in RUN_FILES:
            shutil.copy(d / name, out / metrics["model"] / name)
    runs.sort(key=lambda r: list(PAPER).index(r[0]))
    report.write_json(out / "metrics.json", {m: metrics for m, metrics, _ in runs})
    nan, rows = math.nan, []
    for m, met, _ in runs:
        step = met.get("train_step", {})
        nfe = f"{met['nfe_fwd_per_step']:.1f} / {met['nfe_bwd_per_step']:.1f}"
        rows.append(
            dict(
                met,
                label=f"{LABELS[m]} (ours, Fashion-MNIST)",
                nfe="–" if m == "resnet" else nfe,
                peak_mib=step.get("peak_mib", nan),
                step_seconds=step.get("step_seconds", nan),
            )
        )
    for m, (err, params) in PAPER.items():
        blank = dict.fromkeys(("val_error", "peak_mib", "step_seconds", "epoch_seconds"), nan)
        rows.append(
            dict(
                blank,
                label=f"{LABELS[m]} (paper, MNIST)",
                test_error=err,
                params=int(params),
                nfe="",
            )
        )
        rows[-1]["steps"] = ""
    columns = [(k, head, report.number(spec)) for k, head, spec in TABLE_COLUMNS]
    table = report.markdown_table(rows, columns) + "\n"
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
    """``profile [config flags]``: :func:`profile_step` of every model, one process.

    Measures the three models back to back at the same settings (so on the same machine state),
    prints a table and writes the rows as JSON to ``--out`` (a file) when given.
    """
    argv = list(argv)
    out = ""
    if "--out" in argv:  # here a JSON file, not a run folder
        i = argv.index("--out")
        out, argv = argv[i + 1] if i + 1 < len(argv) else "", argv[:i] + argv[i + 2 :]
    rows = []
    for model in MODELS:
        cfg = common.parse_config(ODENetConfig, SMOKE, argv + ["--model", model], "odenet")
        rows.append(dict(model=model, batch_size=cfg.batch_size, **profile_step(cfg)))
        r = rows[-1]
        print(
            f"{LABELS[model]:8s} params {r['params']:>8,}  NFE {r['nfe_fwd']:>3} / "
            f"{r['nfe_bwd']:>3}  peak {r.get('peak_mib', math.nan):6.1f} MiB  "
            f"step {r['step_seconds']:.3f} s  compile {r['compile_seconds']:.1f} s",
            flush=True,
        )
    if out:
        report.write_json(out, rows)
    return rows


def _table(args: common.cli.RunsArgs) -> str:
    table = write_table(common.cli.require_runs(args), args.out)
    print(table)
    return table


def main(argv=None) -> dict | str | list:
    return common.cli.dispatch(
        "odenet",
        argv,
        lambda argv: common.main(ODENetConfig, SMOKE, build, finish, argv),
        {
            "table": common.cli.Subcommand(
                common.cli.RunsArgs,
                _table,
                "collect finished runs: table.md, metrics.json, curves.png",
                common.cli.runs_args("results/odenet"),
            ),
            "profile": common.cli.Subcommand(
                None, profile_models, "cost of one training step of each model [--out FILE]"
            ),
        },
    )


if __name__ == "__main__":
    common.cli.entry(main)
