"""The shared training loop: jitted optax step, progress bar, evaluation, checkpoints, resume."""

from __future__ import annotations

import dataclasses
import functools
import json
import time
from collections.abc import Callable
from pathlib import Path

import equinox as eqx
import jax
import numpy as np
import optax
from tqdm.auto import tqdm

import ode_jax

from . import checkpoint, distributed, parallel
from .cli import Interrupted, UserError, config_to_dict

# Fields that may change between a run and its resumption without changing the result (the
# global batch of every step does not depend on the number of processes).
_RESUMABLE_CHANGES = ("out", "progress", "fresh", "coordinator", "num_processes", "process_id")


@dataclasses.dataclass(frozen=True)
class Task:
    """What an experiment plugs into :func:`train`.

    Attributes:
        init_model: ``key -> model`` (an equinox module; its inexact arrays are trained).
        get_batch: ``key -> batch``, a pytree whose leaves all have the global batch size as
            their leading axis (that axis is split over devices); traceable by ``jax.jit``
            (a multi-process run compiles it so each process computes only its own rows).
        loss: ``(model, batch, key, probe) -> (loss, aux)``; pass ``probe`` to every
            ``ode_jax.odeint`` call so the loop can log the backward NFE. ``aux`` is a dict of
            scalars to log, by convention including ``"nfe_fwd"``.
        evaluate: ``model -> dict`` of floats, run every ``eval_every`` steps and at the end.
        curve_keys: keys of ``evaluate``'s output drawn on the training curve.
        select: a key of ``evaluate``'s output to minimise (model selection): the model with
            the lowest value so far is kept in ``out/best/`` (see :func:`train`).
        backward_stats: keys of :func:`ode_jax.probe_stats` logged every step as
            ``<key>_bwd`` (e.g. ``"num_jacobians"`` and ``"num_lu"`` for implicit solvers).
        loss_label: what the loss is, with units: the training curve's y-label.
    """

    init_model: Callable
    get_batch: Callable
    loss: Callable
    evaluate: Callable
    curve_keys: tuple = ()
    select: str | None = None
    backward_stats: tuple = ("nfe",)
    loss_label: str = "training loss"


@dataclasses.dataclass
class TrainResult:
    model: eqx.Module
    history: list  # rows {"step", "loss", <aux>, "nfe_bwd", "seconds"} every log_every steps
    evals: list  # rows {"step", <evaluate() output>}
    timing: dict  # {"train_seconds", "first_step_seconds", "eval_seconds"}, summed over resumes


def _optimizer_settings(cfg) -> tuple:
    """The config fields that define the optimiser, as a hashable tuple (make_optimizer's args)."""
    return (
        cfg.optimizer,
        cfg.momentum if cfg.optimizer == "sgd" else 0.0,
        cfg.lr,
        cfg.lr_schedule,
        cfg.steps if cfg.lr_schedule != "constant" else 0,
        tuple(cfg.lr_boundaries) if cfg.lr_schedule == "step" else (),
        cfg.lr_decay if cfg.lr_schedule == "step" else 1.0,
        cfg.grad_clip,
        cfg.weight_decay,
    )


def optimizer_for(cfg) -> optax.GradientTransformation:
    """The optimiser a ``TrainConfig`` trains with (cached: equal settings, one object)."""
    return make_optimizer(*_optimizer_settings(cfg))


def make_schedule(lr, schedule, steps, boundaries=(), decay=1.0):
    """The learning rate against the optimiser step (see TrainConfig); a float when constant."""
    if schedule == "constant":
        return lr
    if schedule == "cosine":
        return optax.cosine_decay_schedule(lr, steps)
    if schedule == "step":  # boundaries are fractions of `steps`
        return optax.piecewise_constant_schedule(
            lr, {max(1, round(b * steps)): decay for b in boundaries}
        )
    raise ValueError(f"unknown lr_schedule {schedule!r}")


@functools.lru_cache(maxsize=16)
def make_optimizer(
    name, momentum, lr, schedule, steps, boundaries, decay, grad_clip, weight_decay=0.0
) -> optax.GradientTransformation:
    """Adam or SGD with momentum, a learning-rate schedule, optional gradient clipping and weight
    decay on the arrays with two or more dimensions (TrainConfig.weight_decay)."""
    lr = make_schedule(lr, schedule, steps, boundaries, decay)
    if name == "adam":
        # Without decay plain adam, whose state older checkpoints hold.
        opt = (
            optax.adamw(lr, weight_decay=weight_decay, mask=_decay_mask)
            if weight_decay
            else optax.adam(lr)
        )
    elif name == "sgd":
        opt = optax.sgd(lr, momentum=momentum or None)
        if weight_decay:  # L2 added to the gradient before momentum, as torch.optim.SGD
            opt = optax.chain(optax.add_decayed_weights(weight_decay, mask=_decay_mask), opt)
    else:
        raise ValueError(f"unknown optimizer {name!r}")
    return optax.chain(optax.clip_by_global_norm(grad_clip), opt) if grad_clip else opt


def _decay_mask(params):
    """True for weight matrices and conv kernels; False for biases and normalisation scales."""
    return jax.tree.map(lambda p: p.ndim >= 2, params)


def optimizer_update(optimizer, grads, opt_state, params):
    """``optimizer.update`` under standard dtype promotion: optax is not clean under
    ``jax_numpy_dtype_promotion="strict"`` (Adam's bias correction raises a Python float
    to an int32 step count), which our own code is checked under."""
    with jax.numpy_dtype_promotion("standard"):
        return optimizer.update(grads, opt_state, params)


@functools.lru_cache(maxsize=16)  # a resumed or repeated run in one process compiles once
def make_train_step(loss_fn: Callable, optimizer, mesh, backward_stats: tuple = ("nfe",)):
    """A jitted ``(model, opt_state, batch, key) -> (model, opt_state, metrics)``; the metrics
    hold the loss, its aux and the backward pass's ``backward_stats`` (see :class:`Task`)."""
    rep = parallel.replicated(mesh)

    @eqx.filter_jit
    def step(model, opt_state, batch, key):
        def objective(model_and_probe):
            model, probe = model_and_probe
            return loss_fn(model, batch, key, probe)

        probe = ode_jax.make_probe()
        (loss, aux), (grads, probe_grad) = eqx.filter_value_and_grad(objective, has_aux=True)(
            (model, probe)
        )
        params = eqx.filter(model, eqx.is_inexact_array)
        updates, opt_state = optimizer_update(optimizer, grads, opt_state, params)
        model = eqx.apply_updates(model, updates)
        model, opt_state = eqx.filter_shard((model, opt_state), rep)
        stats = ode_jax.probe_stats(probe_grad)
        metrics = dict(aux, loss=loss, **{f"{k}_bwd": stats[k] for k in backward_stats})
        return model, opt_state, metrics

    return step


def _check_resumable(saved: dict, cfg, step: int):
    """Raise a :class:`UserError` unless ``cfg`` continues the run checkpointed at ``step``
    under ``saved`` (its config). ``steps`` may change where the optimiser does not depend on
    it (a constant learning rate): a finished run then trains on up to the new ``steps``."""
    current = json.loads(json.dumps(config_to_dict(cfg)))  # as saved: tuples become lists
    resumable = set(_RESUMABLE_CHANGES)
    if saved.get("lr_schedule") == current.get("lr_schedule") == "constant":
        resumable.add("steps")
    diff = sorted(
        k
        for k in set(saved) | set(current)
        if k not in resumable and saved.get(k) != current.get(k)
    )
    where = f"{cfg.out}/checkpoint (step {step})"
    if diff == ["steps"]:
        raise UserError(
            f"{where} was trained with --steps {saved['steps']} and --lr-schedule "
            f"{saved['lr_schedule']}, whose learning rate depends on the number of steps, so "
            f"--steps {cfg.steps} cannot continue it; rerun with --steps {saved['steps']} to "
            "resume it, --fresh to start over, or another --out"
        )
    if diff:
        changes = ", ".join(f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in diff)
        raise UserError(
            f"{where} holds a run of a different config ({changes}); rerun with its flags "
            "to resume it, --fresh to start over, or choose another --out"
        )
    if step > cfg.steps:
        raise UserError(
            f"{where} is past --steps {cfg.steps}; pass --steps {step} or more to continue it, "
            "or --fresh to start over"
        )


def _is_due(step: int, every: int, last: int) -> bool:
    return step % every == 0 or step == last


def train(cfg, task: Task, *, stop_after: int | None = None) -> TrainResult | None:
    """Train ``task`` as configured by ``cfg`` (a ``configs.base.TrainConfig``).

    Resumes from the checkpoint in ``cfg.out/checkpoint`` when there is one (unless
    ``cfg.fresh``): the data and per-step keys are ``fold_in(key, step)``, so a resumed run
    replays exactly the steps an uninterrupted one takes. ``stop_after`` stops after that
    many steps of this call, without a final checkpoint (a simulated kill, for tests), and
    returns None.

    With ``task.select``, every evaluation that lowers ``evaluate()[task.select]`` saves the
    model to ``cfg.out/best`` (:func:`checkpoint.save_best`, ``best.json`` holding the step
    and the value). A run that starts from scratch (no checkpoint, or ``cfg.fresh``) first
    removes the best model of an earlier run there; a resumed one keeps it.

    Multi-process (:mod:`.distributed`; joined here if not yet): every process runs this with
    the same ``cfg``; process 0 alone reads and writes files and broadcasts a loaded
    checkpoint; every process evaluates its own copy of the model and returns the same
    result, whose model is a process-local copy.
    """
    distributed.initialize(cfg)
    writer = distributed.is_writer()
    out = Path(cfg.out)
    mesh = parallel.make_mesh(cfg.num_devices)
    n_dev = mesh.devices.size
    if cfg.batch_size % n_dev:
        raise ValueError(f"batch_size={cfg.batch_size} is not divisible by {n_dev} devices")
    init_key, data_key, step_key = jax.random.split(jax.random.key(cfg.seed), 3)
    optimizer = optimizer_for(cfg)
    model = task.init_model(init_key)
    opt_state = optimizer.init(eqx.filter(model, eqx.is_inexact_array))
    start, history, evals, pending = 0, [], [], []
    timing = dict(train_seconds=0.0, first_step_seconds=0.0, eval_seconds=0.0)

    ckpt_dir, best_dir = out / "checkpoint", out / "best"
    loaded = None if cfg.fresh or not writer else checkpoint.load(ckpt_dir, (model, opt_state))
    if loaded is not None:
        (model, opt_state), meta = loaded
        _check_resumable(meta["config"], cfg, meta["step"])
        start, history, evals, timing = meta["step"], meta["history"], meta["evals"], meta["timing"]
        pending = meta["pending"]  # metrics of steps since the last log row
        if writer:
            done = "finished; nothing to train" if start == cfg.steps else "resuming"
            print(f"{ckpt_dir}: step {start} of {cfg.steps}, {done}", flush=True)
    elif writer:
        checkpoint.clear_best(best_dir)  # an earlier run's: never to be scored as this one's
    if jax.process_count() > 1:  # the other processes take process 0's records and state
        records = (start, history, evals, timing, pending)
        start, history, evals, timing, pending = distributed.broadcast_json(records)
        if start:
            model, opt_state = _broadcast_arrays((model, opt_state))
    model, opt_state = parallel.replicate((model, opt_state), mesh)
    step_fn = make_train_step(task.loss, optimizer, mesh, tuple(task.backward_stats))
    get_batch = parallel.make_global_batch(task.get_batch, mesh)

    show = cfg.progress and writer
    bar = tqdm(total=cfg.steps, initial=start, disable=not show, dynamic_ncols=True)
    interval_start, first = time.perf_counter(), start == 0
    last_saved, step = start, start
    try:
        for step in range(start + 1, cfg.steps + 1):
            t0 = time.perf_counter()
            batch = get_batch(jax.random.fold_in(data_key, step))
            key = jax.random.fold_in(step_key, step)
            model, opt_state, metrics = step_fn(model, opt_state, batch, key)
            pending.append(metrics)
            if first:  # includes compilation
                jax.block_until_ready(metrics)
                timing["first_step_seconds"] = time.perf_counter() - t0
                first = False
            bar.update(1)
            log, ev, ck = (
                _is_due(step, n, cfg.steps)
                for n in (cfg.log_every, cfg.eval_every, cfg.checkpoint_every)
            )
            if log or ev or ck:  # evaluation and checkpoints do not count as training time
                jax.block_until_ready(metrics)
                timing["train_seconds"] += time.perf_counter() - interval_start
            if log:
                # Means over Python floats, so restored (float) and fresh (array) entries agree.
                rows = jax.device_get(pending)
                row = {k: float(np.mean([float(m[k]) for m in rows])) for k in metrics}
                history.append(dict(step=step, **row, seconds=timing["train_seconds"]))
                bar.set_postfix(_postfix(row))
                pending = []
            if ev:
                t_eval = time.perf_counter()
                local_model = distributed.to_local(model)
                results = {k: float(v) for k, v in task.evaluate(local_model).items()}
                evals.append(dict(step=step, **results))
                if task.select is not None and writer:
                    _keep_if_best(best_dir, local_model, step, task.select, results)
                timing["eval_seconds"] += time.perf_counter() - t_eval
                if writer:
                    bar.write(
                        f"step {step}: " + ", ".join(f"{k}={v:.4g}" for k, v in results.items())
                    )
            if ck and writer:
                pending = [{k: float(v) for k, v in m.items()} for m in jax.device_get(pending)]
                meta = dict(config=config_to_dict(cfg), history=history, evals=evals, timing=timing)
                meta["pending"] = pending
                checkpoint.save(ckpt_dir, step, (model, opt_state), meta)
                last_saved = step
            if log or ev or ck:
                interval_start = time.perf_counter()
            if stop_after is not None and step - start >= stop_after:
                bar.close()
                return None
    except KeyboardInterrupt:
        bar.close()
        raise Interrupted(_interrupted_message(cfg, step, last_saved)) from None
    bar.close()
    return TrainResult(
        model=distributed.to_local(model), history=history, evals=evals, timing=timing
    )


def _interrupted_message(cfg, step: int, last_saved: int) -> str:
    if last_saved:
        where = f"the last checkpoint is step {last_saved} in {cfg.out}/checkpoint"
        todo = "rerun the same command (without --fresh) to resume from there"
    else:
        where = f"no checkpoint was written yet (every {cfg.checkpoint_every} steps)"
        todo = "rerunning starts over"
    return f"interrupted at step {step} of {cfg.steps}; {where}: {todo}"


def _broadcast_arrays(tree):
    arrays, static = eqx.partition(tree, eqx.is_array)
    return eqx.combine(distributed.broadcast(arrays), static)


def _keep_if_best(folder: Path, model, step: int, key: str, results: dict):
    if key not in results:
        raise KeyError(f"Task.select={key!r} is not a key of evaluate()'s output {list(results)}")
    best = checkpoint.read_best(folder)
    if best is None or results[key] < best[key]:
        checkpoint.save_best(folder, model, {"step": step, key: results[key]})


def _postfix(row: dict) -> dict:
    names = {"loss": "loss", "nfe_fwd": "nfe_f", "nfe_bwd": "nfe_b"}
    return {short: f"{row[k]:.4g}" for k, short in names.items() if k in row}
