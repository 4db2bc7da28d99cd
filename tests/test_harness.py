"""The experiment harness: config parsing and errors, checkpoints, resume, data parallelism."""

import dataclasses
import functools
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ode_jax
from configs.base import TrainConfig
from configs.spiral import SMOKE, SpiralConfig
from experiments.common import Task, checkpoint, config_from_dict, parse_config, train
from experiments.common.cli import Interrupted, UserError, config_to_dict
from ode_jax.nn import MLPField, call_field

ROOT = Path(__file__).resolve().parents[1]


# --- optimiser ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["sgd", "adam"])
def test_weight_decay_only_on_kernels(name):
    """With zero gradients the update is -lr * wd * w on matrices and zero on biases."""
    from experiments.common.loop import make_optimizer, optimizer_update

    model = eqx.nn.MLP(3, 2, 8, 1, key=jax.random.key(0))
    params = eqx.filter(model, eqx.is_inexact_array)
    zeros = jax.tree.map(jnp.zeros_like, params)
    lr, wd = 0.1, 0.5
    opt = make_optimizer(name, 0.9, lr, "constant", 0, (), 1.0, 0.0, wd)
    updates, _ = optimizer_update(opt, zeros, opt.init(params), params)
    for u, p in zip(jax.tree.leaves(updates), jax.tree.leaves(params)):
        expected = -lr * wd * p if p.ndim >= 2 else jnp.zeros_like(p)
        np.testing.assert_allclose(u, expected, rtol=1e-6, atol=1e-12)
    plain = make_optimizer(name, 0.9, lr, "constant", 0, (), 1.0, 0.0, 0.0)
    updates, _ = optimizer_update(plain, zeros, plain.init(params), params)
    assert all(float(jnp.abs(u).max()) == 0 for u in jax.tree.leaves(updates))


# --- config parsing ------------------------------------------------------------------------


def test_defaults_and_overrides():
    cfg = parse_config(SpiralConfig, SMOKE, ["--steps", "7", "--lr", "0.01", "--no-progress"])
    assert cfg == dataclasses.replace(SpiralConfig(), steps=7, lr=0.01, progress=False)
    assert parse_config(SpiralConfig, SMOKE, []) == SpiralConfig()


def test_smoke_sizes_then_overrides():
    cfg = parse_config(SpiralConfig, SMOKE, ["--smoke", "--steps", "3", "--features", "identity"])
    assert cfg.smoke and cfg.steps == 3 and cfg.features == "identity"
    assert cfg.data_size == SMOKE["data_size"] and cfg.batch_size == SMOKE["batch_size"]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--no-such-flag", "1"], "no-such-flag"),  # unknown key
        (["--steps", "many"], "steps"),  # wrong type
        (["--features", "square"], "features"),  # not one of the choices
        (["--rtol=-1e-3"], "rtol"),  # negative tolerance
        (["--batch-time", "1"], "batch_time"),
        (["--steps", "0"], "steps"),
    ],
)
def test_bad_flags_exit_before_training(argv, message, capsys):
    with pytest.raises(SystemExit) as info:
        parse_config(SpiralConfig, SMOKE, argv)
    captured = capsys.readouterr()
    text = str(info.value.code) + captured.out + captured.err
    assert info.value.code != 0
    assert message in text or message.replace("_", "-") in text, text


def test_bad_values_in_code():
    with pytest.raises(ValueError, match="SpiralConfig.atol=-1.0 must be positive"):
        SpiralConfig(atol=-1.0)
    with pytest.raises(TypeError, match="steps must be int"):
        SpiralConfig(steps=2.5)
    with pytest.raises(TypeError, match="adjoint must be one of"):
        SpiralConfig(adjoint="backprop")
    with pytest.raises(ValueError, match="unknown SpiralConfig keys"):
        config_from_dict(SpiralConfig, {"stepz": 3})
    with pytest.raises(ValueError, match="weight_decay"):
        SpiralConfig(weight_decay=-1e-4)
    cfg = SpiralConfig(steps=11)
    assert config_from_dict(SpiralConfig, json.loads(json.dumps(config_to_dict(cfg)))) == cfg


def test_solver_fields_make_one_solve_settings():
    from configs.cnf import CNFConfig
    from configs.latent_ode import LatentODEConfig
    from configs.odenet import ODENetConfig

    argv = ["--rtol", "1e-4", "--seminorm", "--max-steps", "77"]
    cfg = parse_config(ODENetConfig, {}, argv)
    seminorm = ode_jax.ContinuousAdjoint(seminorm=True)
    assert cfg.solve_settings() == ode_jax.SolveSettings(
        solver="dopri5", rtol=1e-4, atol=1e-3, max_steps=77, adjoint=seminorm
    )
    assert cfg.solve_settings(adjoint="discrete").adjoint == "discrete"  # overrides win
    spiral = SpiralConfig(solver="bosh3", adjoint="discrete")
    assert spiral.solve_settings() == ode_jax.SolveSettings(
        solver="bosh3", rtol=1e-5, atol=1e-6, adjoint="discrete"
    )
    assert CNFConfig(rtol=1e-4).solve_settings().rtol == 1e-4
    assert LatentODEConfig().solve_settings().adjoint == "discrete"
    with pytest.raises(ValueError, match=r"LatentODEConfig\.rtol=0\.0 must be positive"):
        LatentODEConfig(rtol=0.0)  # every config's solver fields are checked, in one place
    with pytest.raises(TypeError, match="no solver fields"):
        ToyConfig().solve_settings()


# --- a tiny task for the training loop ----------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ToyConfig(TrainConfig):
    steps: int = 8
    batch_size: int = 4
    log_every: int = 2
    eval_every: int = 4
    checkpoint_every: int = 3
    progress: bool = False


@functools.cache  # one task object: its jitted functions compile once per process
def toy_task():
    """Learn dy/dt = -y from pairs (y(0), y(0.5)); one small ODE solve per step."""
    ts = np.array([0.0, 0.5], np.float32)

    def solve(model, y0, probe=None):
        return ode_jax.odeint(
            call_field,
            y0,
            ts,
            model,
            solver="bosh3",
            rtol=1e-4,
            atol=1e-5,
            probe=probe,
        )

    def get_batch(key):
        y0 = jax.random.normal(key, (4, 2), jnp.float32)
        return {"y0": y0, "y1": y0 * np.exp(-0.5).astype(np.float32)}

    def loss(model, batch, key, probe):
        noise = 1e-3 * jax.random.normal(key, (), jnp.float32)  # exercises the per-step key
        sol = solve(model, batch["y0"], probe)
        return jnp.mean((sol.ys[-1] - batch["y1"]) ** 2) + noise, {"nfe_fwd": sol.stats["nfe"]}

    @eqx.filter_jit
    def evaluate(model):
        y0 = jnp.ones((1, 2), jnp.float32)
        return {"err": jnp.abs(solve(model, y0).ys[-1] - float(np.exp(-0.5))).max()}

    # float32 parameters, like the experiments (the tests run with x64 enabled).
    return Task(
        lambda key: MLPField(2, 4, 1, dtype=jnp.float32, key=key), get_batch, loss, evaluate
    )


def _params(model):
    return [np.asarray(x) for x in jax.tree.leaves(model)]


def test_resume_equals_uninterrupted(tmp_path):
    task = toy_task()
    full = train(ToyConfig(out=str(tmp_path / "full"), lr=1e-2), task)
    cfg = ToyConfig(out=str(tmp_path / "killed"), lr=1e-2)
    # Killed after step 5: the checkpoint holds step 3, steps 4-5 are lost and replayed.
    assert train(cfg, task, stop_after=5) is None
    meta = json.loads((tmp_path / "killed/checkpoint/checkpoint.json").read_text())
    assert meta["step"] == 3
    resumed = train(cfg, task)
    for a, b in zip(_params(full.model), _params(resumed.model)):
        np.testing.assert_array_equal(a, b)

    def strip(rows):
        return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]

    assert strip(full.history) == strip(resumed.history)
    assert [r["step"] for r in full.history] == [2, 4, 6, 8]
    assert full.evals == resumed.evals and [r["step"] for r in full.evals] == [4, 8]
    assert all(r["nfe_fwd"] > 0 and r["nfe_bwd"] > 0 for r in full.history)
    files = sorted(p.name for p in (tmp_path / "killed/checkpoint").iterdir())
    assert files == ["checkpoint.json", "state_00000008.eqx"]  # no temp files left behind

    # A checkpoint of another config is not silently resumed.
    with pytest.raises(UserError, match="different config.*lr: 0.01 -> 0.03.*--fresh"):
        train(dataclasses.replace(cfg, lr=3e-2), task)
    restarted = train(dataclasses.replace(cfg, fresh=True, steps=2), task)
    assert [r["step"] for r in restarted.history] == [2]


def test_raising_steps_continues_a_finished_run_only_when_the_schedule_allows(tmp_path, capsys):
    """A finished constant-rate run trained on to a larger --steps equals a run trained that
    long at once; under a schedule that depends on --steps (cosine) raising it is refused."""
    task = toy_task()
    whole = train(ToyConfig(out=str(tmp_path / "whole"), lr=1e-2, steps=12), task)
    cfg = ToyConfig(out=str(tmp_path / "run"), lr=1e-2)
    train(cfg, task)
    longer = train(dataclasses.replace(cfg, steps=12), task)
    assert "checkpoint: step 8 of 12, resuming" in capsys.readouterr().out
    for a, b in zip(_params(whole.model), _params(longer.model)):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(UserError, match="past --steps 4"):
        train(dataclasses.replace(cfg, steps=4), task)

    cosine = ToyConfig(out=str(tmp_path / "cosine"), lr=1e-2, lr_schedule="cosine")
    train(cosine, task)
    with pytest.raises(UserError, match="depends on the number of steps.*--steps 8 to resume"):
        train(dataclasses.replace(cosine, steps=12), task)


def test_ctrl_c_says_how_to_resume(tmp_path, monkeypatch):
    """Ctrl-C during training comes out as one message with the step of the last checkpoint."""
    task = toy_task()
    calls = []

    def interrupting(key):
        calls.append(key)
        if len(calls) == 6:
            raise KeyboardInterrupt
        return task.get_batch(key)

    cfg = ToyConfig(out=str(tmp_path), lr=1e-2)
    with pytest.raises(Interrupted, match="step 6 of 8; the last checkpoint is step 3.*resume"):
        train(cfg, dataclasses.replace(task, get_batch=interrupting))


def test_best_model_kept_and_cleared_when_a_run_starts_over(tmp_path):
    """With Task.select the loop keeps the lowest-scoring model in out/best; a run that starts
    from scratch (--fresh, or no checkpoint) never scores an earlier run's best model."""
    task = dataclasses.replace(toy_task(), select="err")
    cfg = ToyConfig(out=str(tmp_path), lr=1e-2, eval_every=2)
    best_dir = tmp_path / "best"

    def best_of(result):
        lowest = min(result.evals, key=lambda r: r["err"])
        return {"step": lowest["step"], "err": lowest["err"]}

    result = train(cfg, task)
    assert checkpoint.read_best(best_dir) == best_of(result)
    like = task.init_model(jax.random.key(1))
    saved = eqx.tree_deserialise_leaves(best_dir / "model.eqx", like)
    np.testing.assert_allclose(task.evaluate(saved)["err"], best_of(result)["err"], rtol=1e-6)

    # A better-scoring model of an earlier run: kept by a resumed run, dropped by a fresh one.
    stale = {"step": 99, "err": -1.0}
    checkpoint.save_best(best_dir, like, stale)
    train(cfg, task)  # resumes at the final checkpoint: nothing to do
    assert checkpoint.read_best(best_dir) == stale
    fresh = train(dataclasses.replace(cfg, fresh=True), task)
    assert checkpoint.read_best(best_dir) == best_of(fresh) == best_of(result)
    checkpoint.save_best(best_dir, like, stale)
    shutil.rmtree(tmp_path / "checkpoint")  # no checkpoint: a new run, too
    train(cfg, task)
    assert checkpoint.read_best(best_dir) == best_of(result)
    with pytest.raises(KeyError, match="select"):
        train(ToyConfig(out=str(tmp_path / "bad")), dataclasses.replace(task, select="acc"))


def test_checkpoint_roundtrip_is_exact(tmp_path):
    tree = {"w": jnp.arange(6.0).reshape(2, 3), "n": jnp.int32(7)}
    assert checkpoint.load(tmp_path, tree) is None
    checkpoint.save(tmp_path, 5, tree, {"note": "x"})
    like = jax.tree.map(jnp.zeros_like, tree)
    loaded, meta = checkpoint.load(tmp_path, like)
    assert meta["step"] == 5 and meta["note"] == "x"
    np.testing.assert_array_equal(loaded["w"], tree["w"])
    assert int(loaded["n"]) == 7


def test_batch_not_divisible_by_devices(tmp_path):
    n = len(jax.devices())
    with pytest.raises(ValueError, match="num_devices"):
        train(ToyConfig(out=str(tmp_path), num_devices=n + 1), toy_task())


# --- data parallelism on two (forced) CPU devices ------------------------------------------

DATA_PARALLEL = textwrap.dedent(
    """
    import jax, numpy as np
    from experiments.common import parallel, train
    from tests.test_harness import ToyConfig, toy_task
    assert len(jax.devices()) == 2, jax.devices()
    mesh = parallel.make_mesh(0)
    task = toy_task()
    batch = parallel.shard_batch(task.get_batch(jax.random.key(0)), mesh)
    assert len(batch["y0"].sharding.device_set) == 2
    assert batch["y0"].addressable_shards[0].data.shape == (2, 2)
    runs = {}
    for n in (1, 2):
        cfg = ToyConfig(out=f"{OUT}/dev{n}", num_devices=n, lr=1e-2, steps=4, eval_every=100)
        runs[n] = train(cfg, task)
    leaves = [x for x in jax.tree.leaves(runs[2].model) if hasattr(x, "sharding")]
    assert all(x.sharding.is_fully_replicated and len(x.sharding.device_set) == 2
               for x in leaves)
    for a, b in zip(runs[1].history, runs[2].history):
        np.testing.assert_allclose(a["loss"], b["loss"], rtol=1e-4)
    for a, b in zip(jax.tree.leaves(runs[1].model), jax.tree.leaves(runs[2].model)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)
    print("DATA_PARALLEL_OK")
    """
)


def test_data_parallel_two_cpu_devices(tmp_path):
    env = dict(
        os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu"
    )
    script = f"OUT = {str(tmp_path)!r}\n" + DATA_PARALLEL
    proc = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0 and "DATA_PARALLEL_OK" in proc.stdout, proc.stderr[-3000:]
