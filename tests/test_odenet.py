"""Image classifiers (paper Table 1): shapes, parameter counts, --smoke runs, the NFE study."""

import dataclasses
import json
import re

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ode_jax
from configs.odenet import ODENetConfig
from experiments import nfe_study, odenet, odenet_report
from experiments.common.cli import UserError
from tests.test_data import write_dataset


@pytest.mark.parametrize(
    "model, params", [("odenet", 208_266), ("rknet", 208_266), ("resnet", 576_778)]
)
def test_parameter_counts_match_torchdiffeq(model, params):
    # torchdiffeq's odenet_mnist.py has exactly these counts (the paper rounds: 0.22M, 0.60M).
    net = odenet.make_model(ODENetConfig(model=model), jax.random.key(0))
    assert odenet.count_params(net) == params


@pytest.mark.parametrize("model", [pytest.param("odenet", marks=pytest.mark.slow), "resnet"])
def test_shapes(model):
    cfg = ODENetConfig(model=model, width=8, res_blocks=1, rtol=1e-2, atol=1e-2, conv_impl="native")
    net = odenet.make_model(cfg, jax.random.key(0))
    x = jnp.ones((3, 28, 28, 1), jnp.float32)
    assert net.downsample(x).shape == (3, 6, 6, 8)
    logits, stats = net(x)
    assert logits.shape == (3, 10) and logits.dtype == jnp.float32
    assert (int(stats["nfe"]) > 0) == (model == "odenet")


def test_ode_blocks_take_the_config_settings():
    cfg = ODENetConfig(width=8, rtol=1e-4, seminorm=True, conv_impl="native")
    body = odenet.make_model(cfg, jax.random.key(0)).body
    assert body.settings == cfg.solve_settings()
    assert body.settings.adjoint == ode_jax.ContinuousAdjoint(seminorm=True)
    rknet = odenet.make_model(dataclasses.replace(cfg, model="rknet"), jax.random.key(0)).body
    assert rknet.settings == cfg.solve_settings(adjoint="discrete")  # backprop through steps


def test_random_crop_shifts_with_zero_fill():
    img = jnp.arange(1.0, 17.0).reshape(1, 4, 4, 1)
    out = odenet.random_crop(jax.random.key(3), jnp.repeat(img, 20, 0), 2)
    assert out.shape == (20, 4, 4, 1)
    values = set(np.unique(np.asarray(out)).tolist())
    assert values <= set(range(17)) and len({np.asarray(o).tobytes() for o in out}) > 1


@pytest.mark.slow  # ~50 s on 2 cores
def test_smoke_runs_without_a_dataset_or_a_run(tmp_path, capsys):
    """On a fresh machine, nfe_study --smoke trains a --smoke ODE-Net (on generated stand-in
    images, and says so) and runs the study on it."""
    out = tmp_path / "nfe"
    rows = nfe_study.main(["--smoke", "--run", str(tmp_path / "absent"), "--out", str(out)])
    printed = capsys.readouterr().out
    assert "training a --smoke one" in printed and "generated stand-in images" in printed
    run = out / "smoke_odenet_run"
    metrics = json.loads((run / "metrics.json").read_text())
    assert 0 <= metrics["test_error"] <= 1 and metrics["params"] > 0
    assert metrics["nfe_fwd_per_step"] > 0 and metrics["nfe_bwd_per_step"] > 0
    assert metrics["epoch_seconds"] > 0
    assert {"val_error", "val_nfe"} <= set(metrics["final_eval"])
    assert json.loads((run / "best/best.json").read_text())["val_error"] == metrics["val_error"]

    assert [r["tol"] for r in rows] == [1e-1, 1e-2]
    assert all(r["nfe_fwd"] > 0 and r["nfe_bwd"] > 0 and r["nfe_bwd_seminorm"] > 0 for r in rows)
    assert {p.name for p in out.iterdir()} == {
        "tolerance_sweep.csv",
        "training_nfe.csv",
        "nfe_study.png",
        "smoke_odenet_run",
    }
    (out / "nfe_study.png").unlink()
    nfe_study.main(["plot", "--run", str(run), "--out", str(out)])  # redraw from the CSV files
    assert (out / "nfe_study.png").stat().st_size > 0
    with pytest.raises(UserError, match="no tolerance_sweep.csv"):
        nfe_study.main(["plot", "--run", str(run), "--out", str(tmp_path / "empty")])


def test_resnet_smoke_with_step_measurement(tmp_path):
    data = tmp_path / "data"
    write_dataset(data, n_train=40, n_test=8)
    argv = ["--smoke", "--data-dir", str(data), "--out", str(tmp_path / "run"), "--no-progress"]
    metrics = odenet.main(argv + ["--model", "resnet", "--steps", "2", "--measure-step"])
    assert metrics["steps"] == 2 and 0 <= metrics["test_error"] <= 1
    assert metrics["nfe_fwd_per_step"] == 0
    step = metrics["train_step"]
    assert step["params"] == metrics["params"] and step["peak_mib"] > 0 and step["step_seconds"] > 0

    out = tmp_path / "results"
    table = odenet.main(["table", str(tmp_path / "run"), "--out", str(out)])
    row = next(line for line in table.splitlines() if line.startswith("| ResNet (ours"))
    assert f"{100 * metrics['test_error']:.2f}%" in row and f"{metrics['params']:,}" in row
    assert "| ResNet (paper, MNIST) | 0.41% |" in table
    assert {p.name for p in (out / "resnet").iterdir()} == set(odenet_report.RUN_FILES)
    assert (out / "curves.png").stat().st_size > 0
    with pytest.raises(UserError, match="no metrics.json"):
        odenet.main(["table", str(tmp_path / "data"), "--out", str(out)])


def test_bad_config_and_missing_data(tmp_path, capsys):
    with pytest.raises(SystemExit):
        odenet.main(["--lr-boundaries", "0.5", "0.2", "--out", str(tmp_path)])
    assert "lr_boundaries=(0.5, 0.2)" in capsys.readouterr().err
    with pytest.raises(UserError, match="--data-dir: no data folder .*apt-get.*--smoke"):
        odenet.main(["--smoke", "--data-dir", str(tmp_path / "none"), "--out", str(tmp_path)])
    with pytest.raises(UserError, match="not an odenet run folder.*python -m experiments.odenet"):
        nfe_study.main(["--run", str(tmp_path / "none"), "--out", str(tmp_path)])


@pytest.mark.slow  # compiles three training steps (~30 s)
def test_profile_every_model(tmp_path):
    out = tmp_path / "profile.json"
    rows = odenet.main(["profile", "--smoke", "--out", str(out)])
    assert [r["model"] for r in rows] == list(odenet_report.MODELS)
    assert json.loads(out.read_text()) == rows
    by = {r["model"]: r for r in rows}
    assert by["resnet"]["nfe_fwd"] == 0 and by["odenet"]["nfe_fwd"] > 0
    assert by["odenet"]["params"] == by["rknet"]["params"] < by["resnet"]["params"]
    assert by["rknet"]["nfe_bwd"] > by["odenet"]["nfe_fwd"]  # backprop through every stage


@pytest.mark.parametrize(
    "kernel, stride, padding, hw",
    [
        (4, 2, 1, (12, 12)),
        (4, 2, 1, (9, 7)),
        (3, 2, 0, (8, 11)),
        (1, 2, 0, (6, 5)),
        (5, 3, 2, (10, 8)),
    ],
)
def test_strided_conv_phase_gradient_matches_native(kernel, stride, padding, hw):
    # Conv2d(impl="phase") computes a strided convolution's input gradient as one stride-1
    # convolution over the stride's phases: same values, first and second derivatives (reverse,
    # forward, Hessian-vector products) as the native convolution, on odd sizes too.
    key = jax.random.key(1)
    layers = {
        impl: ode_jax.nn.Conv2d(
            3, 4, kernel, stride, padding, key=key, dtype=jnp.float64, impl=impl
        )
        for impl in ("native", "phase")
    }
    x = jax.random.normal(jax.random.key(2), (2, *hw, 3), jnp.float64)
    tx = jax.random.normal(jax.random.key(3), x.shape, jnp.float64)
    tw = jax.random.normal(jax.random.key(4), layers["native"].weight.shape, jnp.float64)

    def results(layer):
        def loss(w, x):
            return jnp.sum(jnp.tanh(eqx.tree_at(lambda m: m.weight, layer, w)(x)) ** 2)

        w = layer.weight
        y, ty = jax.jvp(lambda w, x: eqx.tree_at(lambda m: m.weight, layer, w)(x), (w, x), (tw, tx))
        grads = jax.grad(loss, argnums=(0, 1))(w, x)
        hvp = jax.jvp(lambda w: jax.grad(loss, argnums=(0, 1))(w, x), (w,), (tw,))[1]
        return (y, ty, *grads, *hvp)

    for got, want in zip(results(layers["phase"]), results(layers["native"])):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)

    # The point of it: the input gradient's program has no dilated (transposed) convolution.
    def lhs_dilations(layer):
        text = jax.jit(jax.grad(lambda x: jnp.sum(layer(x) ** 2))).lower(x).as_text()
        return {int(d) for d in re.findall(r"lhs_dilate = \[(\d+), \d+\]", text)}

    assert lhs_dilations(layers["phase"]) == {1}
    assert lhs_dilations(layers["native"]) == {1, stride}


def test_conv2d_impl_is_validated():
    with pytest.raises(ValueError, match="impl='matmul' is not one of"):
        ode_jax.nn.Conv2d(3, 4, 3, key=jax.random.key(0), impl="matmul")
