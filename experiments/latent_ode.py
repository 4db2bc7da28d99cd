"""Latent ODE vs RNN baselines on irregularly sampled spirals (paper Section 5, Table 2).

Three models train on the same batches of the same spirals, each seeing ``n_obs`` noisy points
per spiral drawn without replacement from the first ``n_grid`` grid times: the latent ODE
(ELBO), an RNN, and an RNN that also reads the time gap (both Gaussian likelihoods). Each is
scored by the RMSE of its prediction at the ``n_extrap`` grid times after the window, against
the noise-free and the noisy trajectory, on held-out spirals (and on training spirals, also
on those whose targets run past the part of the trajectory that training windows cover).

    python -m experiments.latent_ode --n-obs 30 --out runs/latent_ode/n30   # --help: all flags
    python -m experiments.latent_ode table runs/latent_ode/n{30,50,100} --out results/latent_ode
"""

from __future__ import annotations

import functools
import math
import shutil
import sys
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from configs.latent_ode import SMOKE, LatentODEConfig
from experiments import common
from experiments.common import report
from ode_jax.data import make_spirals, sample_observation_indices
from ode_jax.nn import LatentODE, RNNBaseline, latent_ode_elbo

MODELS = ("latent_ode", "rnn", "rnn_gap")
LABELS = {"latent_ode": "Latent ODE", "rnn": "RNN", "rnn_gap": "RNN + time gap"}


class Models(eqx.Module):
    """The three models, trained side by side (disjoint parameters, summed losses)."""

    latent_ode: LatentODE
    rnn: RNNBaseline | None
    rnn_gap: RNNBaseline | None


def spiral_kwargs(cfg: LatentODEConfig) -> dict:
    """``make_spirals`` keywords from the config (all but the seed, count and start range)."""
    return dict(
        n_grid=cfg.n_grid,
        n_extrap=cfg.n_extrap,
        dt=cfg.dt,
        a=cfg.spiral_a,
        b=cfg.spiral_b,
        theta_min=cfg.theta_min,
        offset=cfg.spiral_offset,
        noise_std=cfg.noise_std,
    )


@functools.lru_cache(maxsize=4)
def datasets(cfg: LatentODEConfig):
    """``(train, test)``: spirals plus each spiral's fixed observation indices (S, n_obs).

    Training windows start anywhere on the long trajectories; test sequences (with
    ``test_covered``) only where their extrapolation targets stay on them (see
    ode_jax/data/_spirals.py: the region past each test window is seen in training windows).
    """
    kw = spiral_kwargs(cfg)
    train_max = cfg.n_total - cfg.n_grid
    test_max = train_max - cfg.n_extrap if cfg.test_covered else train_max
    out = []
    for i, (num, start_max) in enumerate(((cfg.num_train, train_max), (cfg.num_test, test_max))):
        seed = cfg.data_seed + i
        spirals = make_spirals(seed, num, start_max=start_max, **kw)
        # The subset depends on (seed, n_obs) only: the same spirals for every model.
        idx = sample_observation_indices(seed + 1000 * cfg.n_obs, num, cfg.n_grid, cfg.n_obs)
        out.append((spirals, idx))
    return tuple(out)


def observed(spirals, idx):
    """Observed values (S, n, 2) and times (S, n) of ``spirals`` at grid indices ``idx``."""
    x = np.take_along_axis(spirals.noisy, idx[..., None], axis=1)
    return x, spirals.ts[idx]


def predict(models: Models, x_BND, t_BN, cfg: LatentODEConfig, ts_T) -> dict:
    """Each model's prediction on the whole grid ``ts_T`` (latent ODE; uses the posterior mean)
    or on the extrapolation part (RNNs): arrays (B, T or n_extrap, 2); plus the latent path."""
    lode = models.latent_ode
    mean, _ = lode.encode(x_BND, t_BN, ts_T[0])
    z_TBL, _ = lode.trajectory(mean, ts_T)
    out = {"latent_ode": jnp.swapaxes(lode.decode(z_TBL), 0, 1), "z": jnp.swapaxes(z_TBL, 0, 1)}
    future = ts_T[cfg.n_grid :]
    for name in MODELS[1:]:
        rnn = getattr(models, name)
        if rnn is not None:
            out[name] = jax.vmap(rnn.extrapolate, in_axes=(0, 0, None))(x_BND, t_BN, future)
    return out


def grid_times(cfg: LatentODEConfig) -> np.ndarray:
    """The spirals' time grid (as make_spirals builds it), as numpy: concrete inside jit."""
    return (cfg.dt * np.arange(cfg.n_grid + cfg.n_extrap)).astype(np.float32)


@eqx.filter_jit
def _predict_jit(models, x, t, cfg):
    return predict(models, x, t, cfg, grid_times(cfg))


def scores(models: Models, cfg: LatentODEConfig, spirals, idx, prefix: str) -> dict:
    """Extrapolation RMSE of each model against the clean and the noisy trajectory."""
    x, t = observed(spirals, idx)
    pred = _predict_jit(models, x, t, cfg)
    n = cfg.n_grid
    out = {}
    for name in MODELS:
        if name not in pred:
            continue
        p = np.asarray(pred[name])[:, -cfg.n_extrap :]
        for kind in ("clean", "noisy"):
            truth = getattr(spirals, kind)[:, n:]
            out[f"{prefix}{name}_{kind}"] = float(np.sqrt(np.mean((p - truth) ** 2)))
    interp = np.asarray(pred["latent_ode"])[:, :n] - spirals.clean[:, :n]
    out[f"{prefix}latent_ode_interp_clean"] = float(np.sqrt(np.mean(interp**2)))
    return out


def build(cfg: LatentODEConfig) -> common.Task:
    (train, train_idx), (test, test_idx) = datasets(cfg)
    x_all, t_all = (jnp.asarray(a) for a in observed(train, train_idx))
    idx_all = jnp.asarray(train_idx)
    grid = train.ts[: cfg.n_grid]  # numpy: concrete times inside jit
    obs_logvar = 2 * math.log(cfg.obs_std)  # a Python float: takes the data's dtype
    num_eval_train = min(cfg.num_train, cfg.num_test)

    def init_model(key):
        k1, k2, k3 = jax.random.split(key, 3)
        lode = LatentODE(
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
            key=k1,
        )
        rnn, rnn_gap = (
            RNNBaseline(2, cfg.rnn_hidden, use_gap=gap, cell=cfg.cell, key=k)
            if cfg.baselines
            else None
            for gap, k in ((False, k2), (True, k3))
        )
        models = Models(lode, rnn, rnn_gap)
        # float32 throughout, also when a caller has enabled x64 (a no-op otherwise).
        return jax.tree.map(
            lambda a: a.astype(jnp.float32) if eqx.is_inexact_array(a) else a, models
        )

    @jax.jit
    def get_batch(key):
        rows = jax.random.choice(key, cfg.num_train, (cfg.batch_size,), replace=False)
        return {"x": x_all[rows], "t": t_all[rows], "idx": idx_all[rows]}

    def loss(models: Models, batch, key, probe):
        x, t, idx = batch["x"], batch["t"], batch["idx"]
        log_lik, kl, stats = latent_ode_elbo(
            models.latent_ode, x, t, idx, grid, obs_logvar, key, probe=probe
        )
        points = cfg.n_obs * x.shape[-1]
        elbo = jnp.mean(log_lik - kl) / points
        total = -jnp.mean(log_lik - cfg.kl_weight * kl) / points
        aux = {"nfe_fwd": stats["nfe"], "elbo_per_point": elbo, "kl": jnp.mean(kl)}
        for name in MODELS[1:]:
            rnn = getattr(models, name)
            if rnn is not None:
                nll = -jnp.mean(jax.vmap(rnn.log_likelihood)(x, t)) / ((cfg.n_obs - 1) * 2)
                total = total + nll
                aux[f"{name}_nll_per_point"] = nll
        return total, aux

    # Training sequences scored too: the first num_test, and (beyond_) those whose targets
    # run past the end of the trajectory, i.e. past what any training window shows.
    head = slice(num_eval_train)
    beyond = np.flatnonzero(train.start > cfg.n_total - cfg.n_grid - cfg.n_extrap)
    beyond = beyond[: cfg.num_test]
    splits = [(test, test_idx, "test_"), (train.take(head), train_idx[head], "train_")]
    if beyond.size:
        splits.append((train.take(beyond), train_idx[beyond], "beyond_"))

    def evaluate(models: Models) -> dict:
        return {k: v for split in splits for k, v in scores(models, cfg, *split).items()}

    curve = ("test_latent_ode_clean",) + (
        ("test_rnn_clean", "test_rnn_gap_clean") if cfg.baselines else ()
    )
    return common.Task(init_model, get_batch, loss, evaluate, curve_keys=curve)


def finish(cfg: LatentODEConfig, task, result: common.TrainResult, out: Path) -> dict:
    """Figures of the data and of a few test spirals; the final RMSEs."""
    (train, train_idx), (test, test_idx) = datasets(cfg)
    k = cfg.num_plot
    x, t = observed(test, test_idx)
    pred = jax.tree.map(np.asarray, _predict_jit(result.model, x[:k], t[:k], cfg))
    plot_data(out / "data.png", cfg, train, train_idx, test, test_idx)
    plot_extrapolations(out / "extrapolations.png", cfg, test, x[:k], t[:k], pred)
    plot_latents(out / "latent_trajectories.png", cfg, test, pred["z"], test.clockwise[:k])
    return {"n_obs": cfg.n_obs, "figures": sorted(p.name for p in out.glob("*.png"))}


def plot_data(path, cfg, train, train_idx, test, test_idx):
    """The two long trajectories, the span training windows cover, one training sequence's
    observations and one test sequence's window and extrapolation targets."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.4))
    n = cfg.n_grid
    # Two noise-free sequences from index 0: the long trajectories (one per direction).
    kw = dict(spiral_kwargs(cfg), n_grid=cfg.n_total, start_max=0, noise_std=0.0)
    for i, path_ in enumerate(make_spirals(0, 2, **kw).clean):
        label = None if i else "covered by training windows"
        ax.plot(*path_[: cfg.n_total].T, color="0.8", lw=4, label=label)
        ax.plot(*path_[cfg.n_total - 1 :].T, color="0.6", lw=1, ls="--")
    x, _ = observed(train.take(slice(1)), train_idx[:1])
    ax.plot(*x[0].T, "k.", ms=4, label="a training sequence")
    x, _ = observed(test.take(slice(1)), test_idx[:1])
    ax.plot(*x[0].T, "C0.", ms=4, label="a test sequence")
    ax.plot(*test.clean[0, n:].T, "C3-", lw=2, label="its extrapolation targets")
    ax.set(aspect="equal", xticks=[], yticks=[])
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=4)
    fig.suptitle("spiral data: two long trajectories, sequences are stretches of them")
    report.save_figure(fig, path)


def plot_extrapolations(path, cfg, spirals, x, t, pred):
    import matplotlib.pyplot as plt

    k = x.shape[0]
    fig, axes = plt.subplots(1, k, figsize=(3.6 * k, 3.8))
    n = cfg.n_grid
    for i, ax in enumerate(np.atleast_1d(axes)):
        ax.plot(*spirals.clean[i].T, color="0.75", lw=3, label="ground truth")
        ax.plot(*pred["latent_ode"][i, :n].T, "C0-", lw=1.2, label="latent ODE (window)")
        ax.plot(*pred["latent_ode"][i, n:].T, "C0--", lw=1.5, label="latent ODE (extrap.)")
        for name, c in (("rnn", "C3"), ("rnn_gap", "C2")):
            if name in pred:
                ax.plot(*pred[name][i].T, f"{c}:", lw=1.5, label=f"{LABELS[name]} (extrap.)")
        ax.plot(*x[i].T, "k.", ms=4, label=f"{cfg.n_obs} observations")
        ax.set(aspect="equal", xticks=[], yticks=[])
    np.atleast_1d(axes)[0].legend(fontsize=7, loc="lower left")
    fig.suptitle(f"test spirals, n = {cfg.n_obs}: observed window then {cfg.n_extrap} steps")
    report.save_figure(fig, path)


def plot_latents(path, cfg, spirals, z_BTL, clockwise):
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, z_BTL.shape[-1], figsize=(3 * z_BTL.shape[-1], 2.8))
    for j, ax in enumerate(np.atleast_1d(axes)):
        for i in range(z_BTL.shape[0]):
            style = "C1-" if clockwise[i] else "C0-"
            ax.plot(spirals.ts, z_BTL[i, :, j], style, lw=1)
        ax.axvline(spirals.ts[cfg.n_grid - 1], color="0.6", ls=":")
        ax.set(title=f"z{j}", xlabel="t")
    fig.suptitle("learned latent trajectories (blue: counter-clockwise, orange: clockwise)")
    report.save_figure(fig, path)


PAPER = {  # Table 2 of Chen et al. 2018: predictive RMSE, n = 30 / 50 / 100
    "rnn": {30: 0.3937, 50: 0.3202, 100: 0.1813},
    "latent_ode": {30: 0.1642, 50: 0.1502, 100: 0.1346},
}


# Config fields that must agree between runs merged into one column of the table: the data,
# the observed points and the training budget (the model sizes may differ).
SHARED_FIELDS = (
    "num_train", "num_test", "data_seed", "n_grid", "n_extrap", "n_total", "test_covered", "dt",
    "spiral_a", "spiral_b", "theta_min", "spiral_offset", "noise_std", "n_obs", "seed", "steps",
    "batch_size", "optimizer", "lr", "lr_schedule", "grad_clip", "weight_decay", "cell",
    "rnn_hidden",
)  # fmt: skip


def _owner(key: str) -> str | None:
    """The model a final_eval key scores: '<split>_<model>_<kind>' -> model."""
    rest = key.split("_", 1)[1] if "_" in key else ""
    for name in sorted(MODELS, key=len, reverse=True):  # "rnn_gap" before "rnn"
        if rest.startswith(name + "_"):
            return name
    return None


def merge_runs(runs: list[tuple[Path, dict, dict]]) -> dict:
    """One table row from runs with the same n: each model's scores from the last run that
    trained it (a later run replaces an earlier one's model). Raises a ValueError when the
    runs differ in data or training budget (SHARED_FIELDS)."""
    first_dir, first_cfg, _ = runs[0]
    defaults = common.cli.config_to_dict(LatentODEConfig())  # for fields older runs lack

    def value(cfg, field):
        return cfg.get(field, defaults.get(field))

    row, sources = {}, {}
    for d, cfg, metrics in runs:
        for field in SHARED_FIELDS:
            if value(cfg, field) != value(first_cfg, field):
                raise ValueError(
                    f"runs {first_dir} and {d} (both n = {cfg['n_obs']}) differ in {field}: "
                    f"{value(first_cfg, field)!r} vs {value(cfg, field)!r}; only runs with the "
                    "same data and training budget can share a column"
                )
        trained = {_owner(k) for k in metrics["final_eval"]} - {None}
        for key in [k for k in row if _owner(k) in trained]:  # a later run replaces the model
            del row[key]
        row.update({k: v for k, v in metrics["final_eval"].items() if _owner(k) in trained})
        sources.update({name: str(d) for name in MODELS if name in trained})
    return dict(n_obs=first_cfg["n_obs"], steps=runs[-1][2]["steps"], sources=sources, **row)


def write_table(run_dirs, out) -> str:
    """Collect finished runs into ``out``: metrics.json/csv, table.md, figures.

    One column per n. Several runs may give the same n (e.g. the RNN baselines from one run
    and a latent ODE from another); see :func:`merge_runs`. Figures come from the last run
    given for each n, plus ``extrapolations_rnn_run_n*.png`` from the baselines' run.
    """
    import json

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    by_n: dict[int, list] = {}
    for d in map(Path, run_dirs):
        metrics = json.loads((d / "metrics.json").read_text())
        cfg = json.loads((d / "config.json").read_text())
        by_n.setdefault(cfg["n_obs"], []).append((d, cfg, metrics))
    rows = []
    for n, runs in by_n.items():
        rows.append(merge_runs(runs))
        last = runs[-1][0]
        rnn_src = Path(rows[-1]["sources"].get("rnn", last))
        if rnn_src != last:  # the baselines' own extrapolation figure (it draws the RNNs)
            shutil.copy(rnn_src / "extrapolations.png", out / f"extrapolations_rnn_run_n{n}.png")
        shutil.copy(last / "config.json", out / f"config_n{n}.json")
        for fig in ("data", "extrapolations", "latent_trajectories", "training_curve"):
            shutil.copy(last / f"{fig}.png", out / f"{fig}_n{n}.png")
    rows.sort(key=lambda r: r["n_obs"])
    report.write_json(out / "metrics.json", rows)
    flat = [{k: v for k, v in r.items() if k != "sources"} for r in rows]
    report.write_csv(out / "metrics.csv", flat)
    ns = [r["n_obs"] for r in rows]
    head = "| Model | " + " | ".join(f"n = {n}" for n in ns) + " |\n"
    head += "|---|" + "---|" * len(ns) + "\n"
    lines = [head]
    for name in MODELS:
        if name in PAPER:
            paper = " | ".join(f"{PAPER[name].get(n, float('nan')):.4f}" for n in ns)
            lines.append(f"| {LABELS[name]} (paper) | {paper} |\n")
        for kind in ("clean", "noisy"):
            key = f"test_{name}_{kind}"
            if all(key in r for r in rows):
                vals = " | ".join(f"{r[key]:.4f}" for r in rows)
                lines.append(f"| {LABELS[name]} (ours, vs {kind}) | {vals} |\n")
    extra = {  # diagnostics of the latent ODE, against the noise-free path
        "test_latent_ode_interp_clean": "inside the observed window (test)",
        "beyond_latent_ode_clean": "targets past the covered trajectory (training seqs)",
    }
    for key, what in extra.items():
        if all(key in r for r in rows):
            vals = " | ".join(f"{r[key]:.4f}" for r in rows)
            lines.append(f"| Latent ODE (ours): {what} | {vals} |\n")
    if any(len(set(r["sources"].values())) > 1 for r in rows):
        lines.append("\nScores merged from several runs (same data and training budget):\n")
        for r in rows:
            for name, src in r["sources"].items():
                lines.append(f"- n = {r['n_obs']}: {LABELS[name]} from `{src}`\n")
    table = "".join(lines)
    (out / "table.md").write_text(table)
    return table


def main(argv=None) -> dict | str:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["table"]:
        runs, out = common.cli.runs_and_out(argv[1:], "results/latent_ode")
        table = write_table(runs, out)
        print(table)
        return table
    return common.main(LatentODEConfig, SMOKE, build, finish, argv)


if __name__ == "__main__":
    main()
