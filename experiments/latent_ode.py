"""Latent ODE vs RNN baselines on irregularly sampled spirals (paper Section 5.1, Table 2).

One run trains one model on the training spirals and keeps the checkpoint with the lowest
validation extrapolation RMSE (``best/``); its logs and curves show train and validation only.
The models: the latent ODE (ELBO), an RNN stepping along the time grid with an observation
mask (``rnn``), and an RNN stepping from observation to observation reading the time gap
(``rnn_gap``); both RNNs are autoregressive forecasters trained on squared error. Each is
scored by the RMSE of its prediction at the ``n_extrap`` grid times after the observed window.
The ``table`` command scores the kept checkpoints on the test spirals, once.

    python -m experiments.latent_ode --model latent_ode --n-obs 30 --out runs/latent_ode/lode_n30_s0
    python -m experiments.latent_ode val runs/latent_ode/*            # validation summary
    python -m experiments.latent_ode table runs/latent_ode/* --out results/latent_ode
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from configs.latent_ode import SMOKE, LatentODEConfig
from experiments import common
from experiments.common import report
from ode_jax.data import sample_observation_indices
from ode_jax.nn import LatentODE, RNNBaseline, latent_ode_elbo

MODELS = ("latent_ode", "rnn", "rnn_gap")
LABELS = {"latent_ode": "Latent ODE", "rnn": "RNN (grid + mask)", "rnn_gap": "RNN + time gap"}
SPLIT_OFFSET = {"train": 0, "val": 1, "test": 2}


@dataclasses.dataclass(frozen=True)
class SpiralSplit:
    """``S`` spirals on one grid of ``T = n_grid + n_extrap`` times, each observed at ``n_obs``
    of its first ``n_grid`` grid points.

    Attributes:
        ts: (T,) times, ``dt * arange(T)``, float32.
        clean, noisy: (S, T, 2) noise-free and noisy positions, float32.
        clockwise: (S,) bool.
        idx: (S, n_obs) sorted grid indices of the observations, int32.
    """

    ts: np.ndarray
    clean: np.ndarray
    noisy: np.ndarray
    clockwise: np.ndarray
    idx: np.ndarray

    def take(self, rows) -> SpiralSplit:
        return dataclasses.replace(
            self,
            clean=self.clean[rows],
            noisy=self.noisy[rows],
            clockwise=self.clockwise[rows],
            idx=self.idx[rows],
        )

    def observed(self):
        """Observed values (S, n_obs, 2) and times (S, n_obs)."""
        return np.take_along_axis(self.noisy, self.idx[..., None], axis=1), self.ts[self.idx]


def spiral_paths(cfg: LatentODEConfig, r0, phi0, clockwise, ts):
    """Noise-free positions (S, T, 2), float64: r = r0 + b t, phi = phi0 +- t around the
    direction's centre (counter-clockwise at (+offset, 0), clockwise at (-offset, 0))."""
    sign = np.where(clockwise, -1.0, 1.0)[:, None]
    r = r0[:, None] + cfg.spiral_b * ts[None]
    phi = phi0[:, None] + sign * ts[None]
    return np.stack([r * np.cos(phi) + sign * cfg.spiral_offset, r * np.sin(phi)], axis=-1)


@functools.lru_cache(maxsize=8)
def make_split(cfg: LatentODEConfig, split: str) -> SpiralSplit:
    """The ``split`` ("train", "val" or "test") spirals: exactly half clockwise, each from its
    own start point; the observed subset depends on (split, n_obs) only."""
    seed = cfg.data_seed + SPLIT_OFFSET[split]
    num = {"train": cfg.num_train, "val": cfg.num_val, "test": cfg.num_test}[split]
    rng = np.random.default_rng(seed)
    clockwise = rng.permutation(np.arange(num) < num // 2)
    r0 = rng.uniform(cfg.r0_min, cfg.r0_max, num)
    phi0 = rng.uniform(0.0, 2 * math.pi, num)
    ts = cfg.dt * np.arange(cfg.n_grid + cfg.n_extrap)
    clean = spiral_paths(cfg, r0, phi0, clockwise, ts)
    noisy = clean + cfg.noise_std * rng.standard_normal(clean.shape)
    idx = sample_observation_indices(1000 * (seed + 1) + cfg.n_obs, num, cfg.n_grid, cfg.n_obs)
    f32 = np.float32
    return SpiralSplit(ts.astype(f32), clean.astype(f32), noisy.astype(f32), clockwise, idx)


def grid_times(cfg: LatentODEConfig) -> np.ndarray:
    """The time grid as numpy (concrete inside jit)."""
    return (cfg.dt * np.arange(cfg.n_grid + cfg.n_extrap)).astype(np.float32)


def rnn_events(cfg: LatentODEConfig, x_BND, t_BN, idx_BN):
    """What an RNN reads: ``(x, m, gap, event_times)``. ``rnn``: the window's grid points,
    unobserved ones zero with mask 0; ``rnn_gap``: the observations, each with the gap to
    the next one (the last: to the first extrapolation time)."""
    ts = grid_times(cfg)
    if cfg.model == "rnn":
        B = x_BND.shape[0]
        rows = jnp.arange(B)[:, None]
        x = jnp.zeros((B, cfg.n_grid, x_BND.shape[-1]), x_BND.dtype).at[rows, idx_BN].set(x_BND)
        m = jnp.zeros((B, cfg.n_grid), x_BND.dtype).at[rows, idx_BN].set(1.0)
        gap = jnp.full((B, cfg.n_grid), cfg.dt, x_BND.dtype)
        return x, m, gap, jnp.broadcast_to(ts[: cfg.n_grid], (B, cfg.n_grid))
    end = jnp.full(t_BN[:, :1].shape, ts[cfg.n_grid], t_BN.dtype)
    gap = jnp.diff(t_BN, axis=1, append=end)
    return x_BND, jnp.ones(t_BN.shape, x_BND.dtype), gap, t_BN


def init_model(cfg: LatentODEConfig, key):
    """The run's model, float32 throughout (also when a caller has enabled x64)."""
    if cfg.model == "latent_ode":
        model = LatentODE(
            2,
            cfg.latent_size,
            rnn_hidden=cfg.rnn_hidden,
            field_width=cfg.field_width,
            decoder_width=cfg.decoder_width,
            field_depth=cfg.field_depth,
            decoder_depth=cfg.decoder_depth,
            encoder=cfg.encoder,
            cell=cfg.cell,
            settings=cfg.solve_settings(),
            key=key,
        )
    else:
        gap = cfg.model == "rnn_gap"
        model = RNNBaseline(
            2,
            cfg.rnn_hidden,
            use_gap=gap,
            use_mask=not gap,
            scale=cfg.input_scale,
            gap_scale=cfg.dt,  # gaps in grid steps
            cell=cfg.cell,
            key=key,
        )
    return jax.tree.map(lambda a: a.astype(jnp.float32) if eqx.is_inexact_array(a) else a, model)


def predict(model, cfg: LatentODEConfig, x_BND, t_BN, idx_BN) -> dict:
    """``extrap`` (B, n_extrap, 2): the prediction at the grid times after the window;
    ``window`` (B, W, 2) at grid indices ``window_idx`` (B, W): the latent ODE's
    reconstruction at every window grid point (from the posterior mean of z0), an RNN's
    one-step-ahead predictions (``rnn``: grid points 1..n_grid-1, ``rnn_gap``: the
    observations after the first); ``z`` (B, T, L), the latent ODE's latent path."""
    ts = grid_times(cfg)
    W, B = cfg.n_grid, idx_BN.shape[0]
    if cfg.model == "latent_ode":
        mean, _ = model.encode(x_BND, t_BN, ts[0])
        z_TBL, _ = model.trajectory(mean, ts)
        path = jnp.swapaxes(model.decode(z_TBL), 0, 1)
        return dict(
            extrap=path[:, W:],
            window=path[:, :W],
            window_idx=jnp.broadcast_to(jnp.arange(W), (B, W)),
            z=jnp.swapaxes(z_TBL, 0, 1),
        )
    x, m, gap, _ = rnn_events(cfg, x_BND, t_BN, idx_BN)
    future_gaps = jnp.asarray(np.diff(ts[W:]))
    commit = cfg.gap_commit_steps() if cfg.model == "rnn_gap" else 1
    extrapolate = functools.partial(model.extrapolate, commit_every=commit)
    extrap = jax.vmap(extrapolate, in_axes=(0, 0, 0, None))(x, m, gap, future_gaps)
    window = jax.vmap(model.run)(x, m, gap)[:, :-1]
    if cfg.model == "rnn":
        window_idx = jnp.broadcast_to(jnp.arange(1, W), (B, W - 1))
    else:
        window_idx = idx_BN[:, 1:]
    return dict(extrap=extrap, window=window, window_idx=window_idx)


_predict_jit = eqx.filter_jit(predict)


def rmse(a, b) -> float:
    return float(np.sqrt(np.mean((np.asarray(a) - np.asarray(b)) ** 2)))


def scores(model, cfg: LatentODEConfig, data: SpiralSplit, prefix: str) -> dict:
    """Extrapolation RMSE against the noise-free (``extrap``) and the noisy (``extrap_noisy``)
    path at the n_extrap grid times after the window, and the window RMSE against the
    noise-free path at the points of :func:`predict`'s ``window`` (``interp``). RMSE per
    coordinate: the root of the mean over spirals, times and both coordinates."""
    x, t = data.observed()
    pred = jax.tree.map(np.asarray, _predict_jit(model, cfg, x, t, data.idx))
    n = cfg.n_grid
    truth = np.take_along_axis(data.clean, pred["window_idx"][..., None], axis=1)
    return {
        f"{prefix}extrap": rmse(pred["extrap"], data.clean[:, n:]),
        f"{prefix}extrap_noisy": rmse(pred["extrap"], data.noisy[:, n:]),
        f"{prefix}interp": rmse(pred["window"], truth),
    }


def build(cfg: LatentODEConfig) -> common.Task:
    """Train on the training spirals, evaluate (and select the checkpoint) on validation."""
    train, val = make_split(cfg, "train"), make_split(cfg, "val")
    x_all, t_all = (jnp.asarray(a) for a in train.observed())
    idx_all = jnp.asarray(train.idx)
    grid = grid_times(cfg)[: cfg.n_grid]
    obs_logvar = 2 * math.log(cfg.obs_std)  # a Python float: takes the data's dtype

    @jax.jit
    def get_batch(key):
        rows = jax.random.choice(key, cfg.num_train, (cfg.batch_size,), replace=False)
        return {"x": x_all[rows], "t": t_all[rows], "idx": idx_all[rows]}

    def loss_latent_ode(model, batch, key, probe):
        x, t, idx = batch["x"], batch["t"], batch["idx"]
        log_lik, kl, stats = latent_ode_elbo(model, x, t, idx, grid, obs_logvar, key, probe=probe)
        points = cfg.n_obs * x.shape[-1]
        elbo = jnp.mean(log_lik - kl) / points
        loss = -jnp.mean(log_lik - cfg.kl_weight * kl) / points
        return loss, {"nfe_fwd": stats["nfe"], "elbo_per_point": elbo, "kl": jnp.mean(kl)}

    def loss_rnn(model, batch, key, probe):
        del key, probe
        x, m, gap, times = rnn_events(cfg, batch["x"], batch["t"], batch["idx"])
        free = times >= cfg.rollout_from * cfg.n_grid * cfg.dt
        pred = jax.vmap(model.run)(x, m, gap, free)[:, :-1]
        w = m[:, 1:, None]
        mse = jnp.sum(w * (pred - x[:, 1:]) ** 2) / (2 * jnp.sum(w))
        return mse, {"nfe_fwd": jnp.zeros((), mse.dtype)}

    train_head = train.take(slice(min(cfg.num_train, cfg.num_val)))  # a train score to compare

    def evaluate(model) -> dict:
        return scores(model, cfg, val, "val_") | scores(model, cfg, train_head, "train_")

    loss = loss_latent_ode if cfg.model == "latent_ode" else loss_rnn
    return common.Task(
        functools.partial(init_model, cfg),
        get_batch,
        loss,
        evaluate,
        curve_keys=("train_extrap", "val_extrap"),
        select="val_extrap",
        loss_label="negative ELBO per observed coordinate"
        if cfg.model == "latent_ode"
        else "squared error of the next value",
    )


def finish(cfg: LatentODEConfig, task, result: common.TrainResult, out: Path) -> dict:
    """The training curve (train loss, train and validation RMSE) and the kept checkpoint."""
    from experiments import latent_ode_report

    latent_ode_report.plot_run_curve(out / "training_curve.png", cfg, result.history, result.evals)
    best = common.checkpoint.read_best(out / "best")
    return {"model": cfg.model, "n_obs": cfg.n_obs, "best": best}


# --- reading finished runs ------------------------------------------------------------------

# Config fields that must agree between runs collected into one table: the data.
DATA_FIELDS = (
    "num_train", "num_val", "num_test", "data_seed", "n_grid", "n_extrap", "dt", "spiral_b",
    "r0_min", "r0_max", "spiral_offset", "noise_std",
)  # fmt: skip


def load_run(run) -> tuple[LatentODEConfig, eqx.Module, dict]:
    """``(cfg, model, best)``: a run's config and the checkpoint kept on validation."""
    run = Path(run)
    cfg = common.config_from_dict(LatentODEConfig, json.loads((run / "config.json").read_text()))
    like = init_model(cfg, jax.random.key(0))
    best_dir = run / "best"
    model = eqx.tree_deserialise_leaves(best_dir / common.checkpoint.BEST_MODEL, like)
    return cfg, model, common.checkpoint.read_best(best_dir)


def check_same_data(cfgs: list[LatentODEConfig]):
    for cfg in cfgs[1:]:
        for field in DATA_FIELDS:
            if getattr(cfg, field) != getattr(cfgs[0], field):
                raise ValueError(
                    f"runs {cfgs[0].out} and {cfg.out} differ in {field}: "
                    f"{getattr(cfgs[0], field)!r} vs {getattr(cfg, field)!r}"
                )


VAL_COLUMNS = (
    ("run", "run", "{}"),
    ("model", "model", "{}"),
    ("n_obs", "n", "{}"),
    ("seed", "seed", "{}"),
    ("changed", "changed from defaults", "{}"),
    ("val_extrap", "val extrap RMSE", "{:.4f}"),
    ("step", "at step", "{}"),
)


def val_summary(run_dirs) -> str:
    """A markdown table of runs (no test data): model, n, seed, the fields that differ from
    the defaults, the best validation extrapolation RMSE and its step."""
    default = json.loads(json.dumps(common.cli.config_to_dict(LatentODEConfig())))
    skip = {"out", "model", "n_obs", "seed", "progress", "fresh", "smoke"}
    rows = []
    for d in map(Path, run_dirs):
        best = common.checkpoint.read_best(d / "best")
        if best is None:  # not a finished run (or not a run folder)
            continue
        cfg = json.loads((d / "config.json").read_text())
        changed = ", ".join(
            f"{k}={v}" for k, v in sorted(cfg.items()) if k not in skip and default.get(k) != v
        )
        rows.append(dict(cfg, **best, run=d.name, changed=changed or "-"))
    columns = [(k, head, report.number(spec)) for k, head, spec in VAL_COLUMNS]
    return report.markdown_table(rows, columns) + "\n"


def _table(args: common.cli.RunsArgs) -> str:
    from experiments import latent_ode_report

    table = latent_ode_report.write_results(common.cli.require_runs(args), args.out)
    print(table)
    return table


def _val(args: common.cli.RunsArgs) -> str:
    text = val_summary(common.cli.require_runs(args))
    print(text)
    return text


def main(argv=None):
    from experiments import latent_ode_bounds  # imports this module

    runs = common.cli.RunsArgs
    return common.cli.dispatch(
        "latent_ode",
        argv,
        lambda argv: common.main(LatentODEConfig, SMOKE, build, finish, argv),
        {
            "table": common.cli.Subcommand(
                runs,
                _table,
                "score kept checkpoints on the test split, once; write tables",
                common.cli.RunsArgs(out="results/latent_ode"),
            ),
            "val": common.cli.Subcommand(runs, _val, "validation summary of runs (no test data)"),
            "bounds": common.cli.Subcommand(
                latent_ode_bounds.BoundsArgs,
                latent_ode_bounds.run,
                "validation errors of references that learn nothing (bounds_val.md)",
            ),
        },
    )


if __name__ == "__main__":
    common.cli.entry(main)
